"""`maskforge serve`: a local Prefect server on loopback, the process work pool, every deployment and a worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from maskforge.tasks.wrappers import GPU_LIMIT_ENV

POOL = "maskforge-process"
GPU_LIMIT = "gpu"


def prefect_executable() -> str:
    """Return the `prefect` command of this environment (beside the running Python, else on PATH)."""
    beside = Path(sys.executable).with_name("prefect")
    found = str(beside) if beside.is_file() else shutil.which("prefect")
    if not found:
        raise FileNotFoundError(f"no `prefect` executable beside {sys.executable} or on PATH")
    return found


def serve_env(project: Path, port: int) -> dict[str, str]:
    """Return the environment every process of `serve` shares: project-local Prefect home, loopback API, GPU limit."""
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(project / ".prefect"))
    env.update(
        {
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "MASKFORGE_HOME": str(project),  # prefect.yaml's pull step runs flows from the project folder
            GPU_LIMIT_ENV: GPU_LIMIT,
        }
    )
    return env


def wait_healthy(url: str, timeout: float, server: subprocess.Popen) -> None:
    """Poll the API's /health until it answers 200; a server that exits or a timeout is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {server.returncode} before {url} became healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}/health did not answer within {timeout:.0f} s")


def _run(args: list[str], env: dict, cwd: Path, ok_if: str | None = None) -> str:
    """Run a prefect CLI command; a failure is an error with its output, unless the output contains `ok_if`."""
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0 and not (ok_if and ok_if in output):
        raise RuntimeError(f"`{' '.join(args[1:])}` failed ({done.returncode}):\n{output}")
    return output


def bootstrap(project: Path, env: dict) -> None:
    """Create the process work pool and the GPU concurrency limit (both idempotent), then deploy prefect.yaml."""
    prefect = prefect_executable()
    _run([prefect, "work-pool", "create", POOL, "--type", "process"], env, project, ok_if="already exists")
    _run(
        [prefect, "global-concurrency-limit", "create", GPU_LIMIT, "--limit", "1"], env, project, ok_if="already exists"
    )
    _run([prefect, "--no-prompt", "deploy", "--all"], env, project)


def stop_process_tree(proc: subprocess.Popen, timeout: float = 30.0) -> list[int]:
    """Stop a started process and every process below it: SIGTERM to the process, then to the descendants still
    alive, SIGKILL to whatever outlives `timeout`; return the pids that had to be killed. The descendants are
    listed before the first signal, so a child in a session of its own (Prefect's flow-run subprocesses are) or
    one re-parented to init when its parent exits is still stopped: whatever serve starts, it stops."""
    try:
        tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        proc.poll()
        return []
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    proc.poll()  # reap the direct child
    return [member.pid for member in alive]


def _interrupt(signum, frame) -> None:
    """Turn SIGTERM into KeyboardInterrupt so serve's cleanup runs."""
    raise KeyboardInterrupt


def serve(project: Path, port: int = 4200, timeout: float = 180.0, log=print) -> None:
    """Start server and worker, deploy, and wait; Ctrl-C (or either process exiting) stops everything started."""
    env = serve_env(project, port)
    prefect = prefect_executable()
    started: list[subprocess.Popen] = []
    # Ctrl-C and SIGTERM both stop what was started (a background job may inherit SIGINT as ignored: restore it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=project
        )
        started.append(server)
        wait_healthy(env["PREFECT_API_URL"], timeout, server)
        bootstrap(project, env)
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", POOL], env=env, cwd=project)
        started.append(worker)
        log(f"Prefect UI: http://127.0.0.1:{port}  (API {env['PREFECT_API_URL']}; Ctrl-C stops server and worker)")
        while all(p.poll() is None for p in started):
            time.sleep(1)
        raise RuntimeError(f"{'server' if server.poll() is not None else 'worker'} exited; stopping")
    except KeyboardInterrupt:
        log("stopping worker and server")
    finally:
        for proc in reversed(started):  # the worker (and its flow runs) first, then the server
            killed = stop_process_tree(proc)
            if killed:
                log(f"killed {len(killed)} process(es) that did not stop within 30 s of SIGTERM: {killed}")
