"""The CLI's console, its one-line error exit and the learners' pre-flight exit, shared by every command module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

# No markup: messages carry user paths and patterns (`cfg/[bold]x.yaml`, `^[a-z0-9]*$`) that must print as given.
console = Console(markup=False, highlight=False)
#: Errors go to stderr, so `maskforge results ls --format csv > table.csv` never writes one into the data.
errors = Console(markup=False, highlight=False, stderr=True)


def fail(message: str) -> None:
    """Print `error: MESSAGE` as plain text on stderr and exit with status 1."""
    errors.print(Text("error: ", style="red") + Text(message), soft_wrap=True)
    raise typer.Exit(code=1)


def preflight(check: Callable[[Any], Any], config: Any) -> None:
    """Run a learner stage's pre-flight check(config) (tasks/<learner>/preflight.py) before Prefect is imported or
    its server starts: a fault (ValueError, FileNotFoundError) exits 1 with its one line, in seconds."""
    try:
        check(config)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
