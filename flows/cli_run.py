"""What a CLI command needs once it runs a flow: Prefect's log in a file (tracebacks off the console) and a learner's
flow run with one-line errors. Imported by command bodies only, never at a command module's top: it imports Prefect,
which `maskforge --help` and config errors must not pay for (tests/test_layers.py, LAZY)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from prefect.exceptions import TerminationSignal
from prefect.logging.handlers import PrefectConsoleHandler
from prefect.settings import PREFECT_HOME

from maskforge.eval.datasets.base import DatasetError
from maskforge.flows.console import console, errors, fail
from maskforge.flows.ephemeral_api import keep_alive, stop_local_api

#: Exit status of a command ended by Ctrl-C (SIGINT) or SIGTERM: 128 + the signal's number, as a shell reports it.
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class _NoTraceback(logging.Formatter):
    """Formats a record as another formatter would, without its traceback (that goes to the log file)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """Format a copy of the record without exception info."""
        bare = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(bare)


def log_to_file(folder: Path, command: str, verbose: bool) -> Path:
    """Send Prefect's full log (tracebacks included) to FOLDER/COMMAND-TIME.log and, unless verbose, keep tracebacks
    off the console; return the log file."""
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / f"{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("prefect").addHandler(handler)
    if not verbose:
        loggers = [logging.getLogger()] + [
            logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
        ]
        for logger in loggers:
            for console_handler in logger.handlers:
                if isinstance(console_handler, PrefectConsoleHandler) and not isinstance(
                    console_handler.formatter, _NoTraceback
                ):
                    console_handler.setFormatter(_NoTraceback(console_handler.formatter))
    return log_file


#: Command logs kept in $PREFECT_HOME/maskforge-logs: the newest ones; older ones are removed as a command starts.
KEEP_LOGS = 100


def rotate_logs(folder: Path, keep: int = KEEP_LOGS) -> list[Path]:
    """Remove all but the newest `keep` command logs (COMMAND-TIME.log) of `folder`; return the removed files."""
    logs = sorted(folder.glob("*-*.log"), key=lambda f: (f.stat().st_mtime, f.name))
    old = logs[: max(0, len(logs) - keep)]
    for file in old:
        file.unlink(missing_ok=True)
    return old


def command_log(command: str, verbose: bool = False) -> Path:
    """Start the log file of one command under $PREFECT_HOME/maskforge-logs, rotating the folder to its newest
    KEEP_LOGS files; return it."""
    folder = PREFECT_HOME.value() / "maskforge-logs"
    log_file = log_to_file(folder, command, verbose)
    rotate_logs(folder)
    return log_file


def _exit_now(what: str, code: int) -> None:
    """End the process at once with `code` after a signal: stop the local API (Prefect's atexit hook would), flush
    the logs and the console, then os._exit, since a normal exit joins every worker thread and a generation task
    abandoned mid-stage (flows/runners.py:AbandoningTaskRunner) would hold it for minutes. Nothing is lost: every
    output is written atomically and a rerun resumes from what is finished."""
    errors.print(f"{what}: exit {code}", markup=False, highlight=False)
    stop_local_api()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _raise_termination(signum: int, frame) -> None:
    """SIGTERM handler outside a flow run: end the command as Prefect's engine does inside one."""
    raise TerminationSignal(signal=signum)


@contextmanager
def ends_cleanly_on_signals(watch: bool = True, log: Callable[[str], None] = console.print) -> Iterator[None]:
    """Run a flow so that Ctrl-C and SIGTERM end the command in seconds with status 130 / 143.

    A terminal's Ctrl-C (and `kill -TERM -PGID`) reaches the whole process group, the ephemeral Prefect API's
    subprocess included; the flow engine then reports the run as crashed to an API that is gone, and its client
    retries for minutes (the command "hung", leaving the dead server unreaped). The watchdog restarts the API on its
    port, so the report lands and the run shows as crashed in the UI; then the command stops that server itself and
    ends (_exit_now). SIGTERM becomes an exception outside the flow run too (inside it, Prefect's engine does the
    same), so it never kills the process outright and leaves the server behind. A background job may have inherited
    SIGINT as ignored: Ctrl-C is restored to raising KeyboardInterrupt. `watch` False: the caller keeps the API
    alive itself (generate's survive_api_loss)."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNAL_EXIT}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_termination)
    try:
        with keep_alive(log) if watch else nullcontext():
            yield
    except KeyboardInterrupt:
        _exit_now("interrupted (SIGINT)", SIGNAL_EXIT[signal.SIGINT])
    except TerminationSignal as err:
        _exit_now("terminated (SIGTERM)", SIGNAL_EXIT.get(getattr(err, "signal", 0), SIGNAL_EXIT[signal.SIGTERM]))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_flow(flow, cfg, command: str, errors: tuple[type[BaseException], ...]):
    """Run a learner's flow with Prefect's log in a file; dataset errors, ValueError, RuntimeError and `errors`
    become one plain line naming the log (exit 1); Ctrl-C and SIGTERM end it with 130 / 143
    (ends_cleanly_on_signals)."""
    log_file = command_log(command)
    with ends_cleanly_on_signals():
        try:
            return flow(config=cfg)
        except (DatasetError, ValueError, RuntimeError, *errors) as err:
            fail(f"{err} (traceback in {log_file})")
