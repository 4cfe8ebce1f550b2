"""`maskforge shards ls|show|sheet`: browse a run's shards (list, one sample as a PNG, the contact sheet).

Everything here is light (no torch, no Prefect: tests/test_layers.py checks it), so it all imports at the top."""

from __future__ import annotations

from pathlib import Path

import typer
from PIL import Image
from rich.table import Table

from maskforge.flows.cli_support import check_out_file, non_empty_path, non_empty_text, save_image
from maskforge.flows.console import console, fail
from maskforge.storage.codec import ShardCodecError
from maskforge.storage.preview import render_preview
from maskforge.storage.reader import RunIncompleteError, RunReader
from maskforge.tasks.artifacts import MAX_SHEET_PER_SOURCE, MAX_SHEET_SIDE, contact_sheet_image

shards_app = typer.Typer(help="Browse the shards of a run.", no_args_is_help=True)


#: File name endings of the PNG files `shards show` and `shards sheet` write.
PNG = (".png",)

#: `--no-verify`: the explicit opt-out of checking each shard read against the sha256 its run's marker recorded.
NO_VERIFY_HELP = "Skip checking each shard read against the sha256 recorded in the run's completion marker."


def _open_run(run: str, partial: bool, verify: bool = True):
    """Return a RunReader of `run`, exiting with the reason when it is not a complete run."""
    try:
        return RunReader(run, allow_partial=partial, verify=verify)
    except RunIncompleteError as err:
        fail(str(err))


@shards_app.command("ls")
def shards_ls(
    run: str = typer.Argument(..., help="Run folder.", parser=non_empty_text),
    partial: bool = typer.Option(False, "--partial", help="Read a run without a valid completion marker."),
) -> None:
    """List a run's shards with their sample counts and sizes."""
    manifest = _open_run(run, partial).manifest.to_pylist()
    table = Table(title=f"{run}: {len(manifest)} samples")
    for col in ("shard", "samples", "classes", "sources"):
        table.add_column(col)
    for shard in sorted({row["shard"] for row in manifest}):
        rows = [r for r in manifest if r["shard"] == shard]
        table.add_row(
            shard,
            str(len(rows)),
            ", ".join(sorted({r["class_name"] for r in rows})),
            ", ".join(sorted({r["source"] for r in rows})),
        )
    console.print(table)


@shards_app.command("show")
def shards_show(
    run: str = typer.Argument(..., help="Run folder.", parser=non_empty_text),
    key: str = typer.Argument(..., help="Sample key (see the manifest or `shards ls`).", parser=non_empty_text),
    out: Path = typer.Option(
        ..., "--out", help="PNG file to write: the image with mask overlay and class legend.", parser=non_empty_path
    ),
    partial: bool = typer.Option(False, "--partial", help="Read a run without a valid completion marker."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
) -> None:
    """Write one sample as a PNG: image, coloured mask overlay and a legend of its classes."""
    check_out_file(out, PNG)
    try:
        sample = _open_run(run, partial, not no_verify).get(key)
    except (RunIncompleteError, ShardCodecError, KeyError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) else str(err))
    names = {int(c): n for c, n in sample.meta["class_names"].items()}
    save_image(render_preview(sample, names), out)


@shards_app.command("sheet")
def shards_sheet(
    run: str = typer.Argument(..., help="Run folder.", parser=non_empty_text),
    out: Path = typer.Option(
        ..., "--out", help="PNG file to write: a row per class, masks tinted.", parser=non_empty_path
    ),
    per_source: int = typer.Option(
        2, min=1, max=MAX_SHEET_PER_SOURCE, help=f"Samples per class and source (1 to {MAX_SHEET_PER_SOURCE})."
    ),
    side: int = typer.Option(
        128,
        min=16,
        max=MAX_SHEET_SIDE,
        help=f"Cell size in pixels, 16 to {MAX_SHEET_SIDE} (images are upscaled to fit).",
    ),
    partial: bool = typer.Option(False, "--partial", help="Read a run without a valid completion marker."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
) -> None:
    """Write the run's contact sheet as one PNG: class names left, source names above, masks tinted and outlined."""
    check_out_file(out, PNG)
    try:
        sheet = contact_sheet_image(_open_run(run, partial, not no_verify), per_source, side)
    except (RunIncompleteError, ValueError) as err:
        fail(str(err))
    save_image(Image.fromarray(sheet), out)
