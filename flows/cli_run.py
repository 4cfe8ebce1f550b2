"""What a CLI command needs once it runs a flow: Prefect's log in a file (tracebacks off the console) and a learner's
flow run with one-line errors. Imported by command bodies only, never at a command module's top: it imports Prefect,
which `maskforge --help` and config errors must not pay for (tests/test_layers.py, LAZY)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prefect.logging.handlers import PrefectConsoleHandler
from prefect.settings import PREFECT_HOME

from maskforge.eval.datasets.base import DatasetError
from maskforge.flows.console import fail


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


def command_log(command: str, verbose: bool = False) -> Path:
    """Start the log file of one command under $PREFECT_HOME/maskforge-logs; return it."""
    return log_to_file(PREFECT_HOME.value() / "maskforge-logs", command, verbose)


def run_flow(flow, cfg, command: str, errors: tuple[type[BaseException], ...]):
    """Run a learner's flow with Prefect's log in a file; dataset errors, ValueError, RuntimeError and `errors`
    become one plain line naming the log (exit 1)."""
    log_file = command_log(command)
    try:
        return flow(config=cfg)
    except (DatasetError, ValueError, RuntimeError, *errors) as err:
        fail(f"{err} (traceback in {log_file})")
