"""The CLI's console and its one-line error exit, shared by every command module."""

from __future__ import annotations

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
