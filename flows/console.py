"""The CLI's console and its one-line error exit, shared by every command module."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

# No markup: messages carry user paths and patterns (`cfg/[bold]x.yaml`, `^[a-z0-9]*$`) that must print as given.
console = Console(markup=False, highlight=False)


def fail(message: str) -> None:
    """Print `error: MESSAGE` as plain text and exit with status 1."""
    console.print(Text("error: ", style="red") + Text(message), soft_wrap=True)
    raise typer.Exit(code=1)
