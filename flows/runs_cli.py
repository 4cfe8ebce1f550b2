"""`maskforge runs ls|gc`: the catalogue of complete generation runs (storage/catalogue.py) and its retention
(storage/retention.py). Light: pyarrow and the storage layer only, no torch, no Prefect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from maskforge.flows.cli_support import non_empty_path, non_empty_text
from maskforge.flows.console import console, fail
from maskforge.storage.catalogue import CatalogueError, read_catalogue, rebuild_catalogue, select_runs
from maskforge.storage.results import ResultsError
from maskforge.storage.retention import RetentionPolicy, parse_size
from maskforge.tasks.retention import collect_runs

runs_app = typer.Typer(
    help="The catalogue of complete generation runs: list them, rebuild it, remove old runs.", no_args_is_help=True
)


def _runs_folder(folder: Path) -> None:
    """Exit with one line unless `folder` is an existing folder."""
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "no such folder"
        fail(f"{folder}: {what}; expected a runs folder (a generation config's run.out_dir)")


def _classes(row: dict) -> str:
    """`name: n` per class of a row's samples_per_class (all sources together)."""
    per_class = json.loads(row["samples_per_class"])
    return ", ".join(f"{name}: {sum(sources.values())}" for name, sources in sorted(per_class.items()))


@runs_app.command("ls")
def runs_ls(
    folder: Path = typer.Argument(Path("runs"), help="Runs folder (run.out_dir of generation).", parser=non_empty_path),
    dataset: Optional[str] = typer.Option(None, help="Only runs of this dataset.", parser=non_empty_text),
    fold: Optional[int] = typer.Option(None, min=0, max=3, help="Only runs of this fold."),
    last: Optional[int] = typer.Option(None, min=1, max=100_000, help="Only the newest N selected runs."),
    rebuild: bool = typer.Option(
        False, "--rebuild", help="First add the rows of complete runs that have none (runs older than the catalogue)."
    ),
    output_json: bool = typer.Option(False, "--json", help="Print the selected rows as JSON."),
) -> None:
    """List complete runs, oldest first: when, dataset/fold, round, samples per class, rejected, config, URL."""
    _runs_folder(folder)
    try:
        if rebuild:
            for url in rebuild_catalogue(str(folder)):
                console.print(f"catalogued {url}", soft_wrap=True)
        rows = select_runs(read_catalogue(str(folder)), dataset, fold, last or 0)
    except CatalogueError as err:
        fail(str(err))
    if output_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        console.print(f"{folder}: no catalogued run matches (runs made before the catalogue: --rebuild)")
        return
    table = Table(title=f"{folder}: {len(rows)} complete run(s), oldest first")
    for name in ("completed (UTC)", "data", "round", "samples", "per class", "rejected", "config", "url"):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(
            r["completed_at"][:16].replace("T", " "),
            f"{r['dataset']}/{r['fold']}",
            str(r["round"]),
            str(r["samples"]),
            _classes(r),
            str(r["rejected"]),
            r["config_hash"][:8],
            r["url"],
        )
    console.print(table)


@runs_app.command("gc")
def runs_gc(
    folder: Path = typer.Argument(..., help="Runs folder (run.out_dir of generation).", parser=non_empty_path),
    keep_last: int = typer.Option(..., "--keep-last", min=1, max=100_000, help="Newest runs kept per dataset/fold."),
    keep_days: Optional[float] = typer.Option(None, "--keep-days", min=0, max=36_500, help="Keep runs this young."),
    max_bytes: Optional[str] = typer.Option(
        None, "--max-bytes", help="Disk budget (bytes, or 500M, 50G, 1T): older runs stay while all runs fit it."
    ),
    results: Optional[list[Path]] = typer.Option(
        None,
        "--results",
        help="Benchmark folders whose latest evaluations keep their runs (repeatable; default results).",
        parser=non_empty_path,
    ),  # fmt: skip
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be removed; remove nothing."),
) -> None:
    """Remove the oldest complete runs beyond the policy that no latest benchmark evaluation refers to."""
    _runs_folder(folder)
    tables = [str(p) for p in (results or [Path("results")])]
    try:
        budget = parse_size(max_bytes) if max_bytes is not None else None
        report = collect_runs(
            str(folder),
            RetentionPolicy(keep_last, keep_days, budget),
            tables,
            dry_run,
            log=lambda line: console.print(line, soft_wrap=True),
        )
    except (CatalogueError, ResultsError, ValueError) as err:
        fail(str(err))
    if dry_run:
        console.print(f"dry run: {len(report['removed'])} run(s) would go, {len(report['kept'])} kept by the policy")
        return
    console.print(f"removed {len(report['removed'])} run(s); {len(report['kept']) + len(report['in_use'])} kept")
