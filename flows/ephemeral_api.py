"""Keep Prefect's ephemeral local API alive during a CLI run: restart it on its port when its process dies.

On a busy machine the ephemeral API subprocess can be killed (out of memory, an impatient user, a crash) while a
long run is in flight; every later state update then fails and the run with it. A watchdog thread restarts the
server on the same port and database, so the run's clients (HTTP retries, the events websocket) reconnect and the run
goes on; if a flow run fails anyway, `survive_api_loss` restarts the API and resumes the run from its completed parts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

#: Seconds between two looks at the ephemeral API's process.
WATCH_INTERVAL_S = 1.0


def uses_ephemeral_api() -> bool:
    """Whether flows in this process talk to Prefect's ephemeral local API (no PREFECT_API_URL set)."""
    return not os.environ.get("PREFECT_API_URL")


def _server():
    """Return the ephemeral API server singleton Prefect's client uses (imported late: it loads the whole app)."""
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()


def restart_if_dead(log: Callable[[str], None]) -> bool:
    """Restart the ephemeral API on its own port when its process has exited; return whether it was restarted."""
    server = _server()
    process = server.server_process
    if not server.running or process is None or process.poll() is None:
        return False
    code, port = process.returncode, server.port
    server.running, server.server_process = False, None
    server.port = port  # start() keeps a set port: clients and the events websocket reconnect to the same address
    server.start()
    log(f"the local Prefect API exited (code {code}); restarted it on port {server.port}")
    return True


def stop_local_api() -> None:
    """Stop the ephemeral API this process started (or restarted), if any: what Prefect's atexit hook does, for an
    exit that skips atexit hooks."""
    if uses_ephemeral_api():
        server = _server()
        if server.running or server.server_process is not None:
            server.stop()


@contextmanager
def keep_alive(log: Callable[[str], None] = print) -> Iterator[None]:
    """Watch the ephemeral API while the block runs (no-op when PREFECT_API_URL names a server of its own)."""
    if not uses_ephemeral_api():
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(WATCH_INTERVAL_S):
            try:
                restart_if_dead(log)
            except Exception as err:  # noqa: BLE001 - a failed restart is reported; survive_api_loss tries again
                log(f"could not restart the local Prefect API: {err}")

    thread = threading.Thread(target=watch, name="maskforge-api-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def api_lost(err: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) is a lost connection to the Prefect API."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, httpx.TransportError) or "All connection attempts failed" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def survive_api_loss(call: Callable[[], dict], restarts: int, log: Callable[[str], None] = print) -> dict:
    """Run `call` (a flow) under the watchdog; when it still fails because the API went away, bring the API back and
    call it again: the run resumes from its completed class parts (their samples are deterministic)."""
    for attempt in range(restarts + 1):
        try:
            with keep_alive(log):
                return call()
        except Exception as err:  # noqa: BLE001 - only a lost API is handled here; anything else is re-raised
            if attempt == restarts or not api_lost(err):
                raise
            log(f"lost the Prefect API ({type(err).__name__}); resuming the run (attempt {attempt + 2})")
            if uses_ephemeral_api():
                restart_if_dead(log)
    raise AssertionError("unreachable")
