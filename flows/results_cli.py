"""`maskforge results ls|config`: the benchmark table of every learner, filtered, as a terminal table, CSV or JSON,
and the config a row's hash names."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from maskforge.flows.cli_support import non_empty_path, non_empty_text
from maskforge.flows.console import console, fail
from maskforge.storage.catalogue import rounds_label
from maskforge.storage.results import (
    ResultsError,
    csv_text,
    read_config,
    read_results,
    rows_as_dicts,
    select_rows,
)
from maskforge.tasks.benchmark import (
    MEAN_FOLD,
    fold_mean_rows,
    headline,
    metric_cells,
    stored_configs,
    synthetic_label,
)

results_app = typer.Typer(help="Read the benchmark table the learners' evaluations append to.", no_args_is_help=True)


class Format(str, Enum):
    """Output formats of `results ls`."""

    table = "table"
    csv = "csv"
    json = "json"


def protocol_table(protocol: str, rows: list[dict], metrics: tuple[str, ...]) -> Table:
    """Return a rich table of one protocol's rows, oldest first: when, model, data, setting, synthetic data,
    its generation round, evaluated × runs, `metrics` in %, and the config hash's first 8 characters; long cells
    fold, never cut."""
    table = Table(title=f"{protocol}: {len(rows)} row(s); metrics in %")
    for name in ("when (UTC)", "model", "data", "setting", "synthetic", "round", "n × runs"):
        table.add_column(name, overflow="fold")
    for name in metrics:
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("config", overflow="fold")
    for r in rows:
        table.add_row(
            r["created_at"][:16].replace("T", " "),
            r["model"],
            f"{r['dataset']} {'f0-3 mean' if r['fold'] == MEAN_FOLD else 'f' + str(r['fold'])} {r['shots']}-shot",
            r["setting"],
            synthetic_label(r),
            rounds_label(r["synthetic_source"]),  # the synthetic data's generation round: a score per night
            f"{r['evaluated']} × {r['runs']}",
            *metric_cells(r, metrics),
            r["config_hash"][:8],
        )
    return table


def _check_metrics(rows: list[dict], metrics: list[str]) -> None:
    """Exit with the metric names the rows have when a --metric is in none of them."""
    held = sorted({name for r in rows for name in r["metrics"]})
    missing = [m for m in metrics if m not in held]
    if missing:
        fail(f"--metric: no selected row has {missing}; they have {held}")


def _table_folder(folder: Path) -> None:
    """Exit with one line unless `folder` is an existing folder."""
    if not folder.exists():
        fail(f"{folder}: no such folder (a learner's eval.results_dir; evaluations create it)")
    if not folder.is_dir():
        fail(f"{folder}: is a file; expected the benchmark table's folder of results-*.parquet files")


@results_app.command("ls")
def results_ls(
    folder: Path = typer.Argument(
        Path("results"), help="Benchmark table folder (a learner's eval.results_dir).", parser=non_empty_path
    ),
    model: Optional[str] = typer.Option(
        None, help="Only rows of this model (hsnet, gfss-gaps, diffews, ...).", parser=non_empty_text
    ),
    dataset: Optional[str] = typer.Option(
        None, help="Only rows of this dataset (toy, pascal, coco, fss).", parser=non_empty_text
    ),
    fold: Optional[int] = typer.Option(None, min=0, max=3, help="Only rows of this fold."),
    shots: Optional[int] = typer.Option(None, min=1, max=1000, help="Only rows with this many real shots."),
    setting: Optional[str] = typer.Option(
        None, help="Only rows of this setting (1R, 1R+20S, K-shot, ...).", parser=non_empty_text
    ),
    last: Optional[int] = typer.Option(None, min=1, max=100_000, help="Only the newest N selected rows."),
    metric: Optional[list[str]] = typer.Option(
        None, "--metric", help="Metric column to show (repeatable); default: each protocol's headline metrics."
    ),
    output: Format = typer.Option(Format.table, "--format", help="table (scores in %), csv or json (as stored)."),
) -> None:
    """List benchmark rows, oldest first: a table per protocol, or every selected row as CSV or JSON on stdout."""
    _table_folder(folder)
    try:
        every = rows_as_dicts(read_results(str(folder)))
    except ResultsError as err:
        fail(f"{err} (move the file away to read the others)")
    rows = select_rows(every, last, model=model, dataset=dataset, fold=fold, shots=shots, setting=setting)
    if metric:
        metric = list(dict.fromkeys(metric))  # a metric asked twice is one column
        _check_metrics(rows, metric)
    if output is Format.csv:
        typer.echo(csv_text(rows), nl=False)
    elif output is Format.json:
        typer.echo(json.dumps(rows, indent=1))
    elif not rows:
        console.print(f"{folder}: no benchmark rows match ({len(every)} in all)")
    else:
        for protocol in sorted({r["protocol"] for r in rows}):
            chosen = [r for r in rows if r["protocol"] == protocol]
            metrics = tuple(metric) if metric else headline(protocol, chosen)
            console.print(protocol_table(protocol, chosen, metrics))
        # Table 1's row of its own: the mean over the four folds where all four have rows of the same config
        means = fold_mean_rows(rows, stored_configs(str(folder)))
        if means:
            metrics = tuple(metric) if metric else headline(means[0]["protocol"], means)
            console.print(protocol_table(f"{means[0]['protocol']}, mean over folds 0-3", means, metrics))


@results_app.command("config")
def results_config(
    config_hash: str = typer.Argument(..., help="A row's config hash, or its first 4+ hex digits (results ls)."),
    folder: Path = typer.Argument(
        Path("results"), help="Benchmark table folder (a learner's eval.results_dir).", parser=non_empty_path
    ),
) -> None:
    """Print, as YAML, the config stored with the rows of this hash (what the hash covers: output folders, device
    and threads left out), after checking that it hashes to its name."""
    _table_folder(folder)
    try:
        full, config = read_config(str(folder), config_hash)
    except ResultsError as err:
        fail(str(err))
    typer.echo(f"# config {full} (from {folder})")
    typer.echo(yaml.safe_dump(config, sort_keys=False), nl=False)
