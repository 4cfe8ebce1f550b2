"""The `maskforge` command line: the root app, `generate` and `serve`; each command group lives in its own module
(shards_cli, datasets_cli, models_cli, results_cli, runs_cli; every learner's group is built from its declaration by
learner_cli), the helpers they share in cli_support.

Start-up is instant by design: every module imported here is light (typer, rich, pydantic configs; no torch, no
Prefect), and each command imports the flows and models it runs in its body, after its config validated. The modules
a command body may import are listed with the reason in tests/test_layers.py (LAZY), which also checks that `--help`,
every group's `--help` and a config error import none of the heavy packages."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

# Prefect reads these at import: offline machines, and a 2-core machine needs a patient ephemeral API start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# transformers' notes on resized embeddings (textual inversion adds tokens) are known and harmless: errors only.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402
from rich.table import Table  # noqa: E402

from maskforge.eval.datasets.base import DatasetError
from maskforge.flows.cli_support import config_failure, non_empty_path
from maskforge.flows.console import console, fail
from maskforge.flows.datasets_cli import datasets_app
from maskforge.flows.ephemeral_api import survive_api_loss
from maskforge.flows.learner_cli import learner_app
from maskforge.flows.models_cli import models_app, toy_app
from maskforge.flows.results_cli import results_app
from maskforge.flows.runs_cli import runs_app
from maskforge.flows.shards_cli import shards_app
from maskforge.storage.reader import RunReader
from maskforge.tasks.config import load_config
from maskforge.tasks.registry import learners

# Known and harmless: diffusers' rename of torch_dtype (every supported version reads it), controlnet-aux's timm
# registry and optional extras it does not need for HED.
for _message in ("`torch_dtype` is deprecated", "Overwriting tiny_vit", "The module 'mediapipe' is not installed"):
    warnings.filterwarnings("ignore", message=_message)

app = typer.Typer(
    help="maskforge: synthetic few-shot segmentation data, orchestrated with Prefect.", no_args_is_help=True
)
app.add_typer(shards_app, name="shards")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(results_app, name="results")
app.add_typer(runs_app, name="runs")
for _learner in learners():  # one group per registered learner (tasks/registry.py), built by flows/learner_cli.py
    app.add_typer(learner_app(_learner), name=_learner.name)
app.add_typer(toy_app, name="toy")


#: Times `generate` resumes a run whose flow failed because the Prefect API was lost (completed parts are reused).
API_RESTARTS = 3


def summary_table(summary: dict) -> Table:
    """Return a rich table of samples per class and source (and rejected samples: OOD or empty) from a run summary."""
    sources = sorted({s for counts in summary["samples_per_class"].values() for s in counts})
    rejected = {
        name: n + (summary.get("empty_rejected") or {}).get(name, 0)
        for name, n in (summary.get("ood_rejected") or {}).items()
    }
    table = Table(title=f"{summary['dataset']} fold {summary['fold']}: {summary['n_samples']} samples")
    table.add_column("class", no_wrap=True)
    for s in sources:
        table.add_column(s, justify="right", no_wrap=True)
    if rejected:
        table.add_column("rejected", justify="right")
    table.add_column("real shots")
    for name, counts in summary["samples_per_class"].items():
        cells = [str(counts.get(s, 0)) for s in sources] + ([str(rejected.get(name, 0))] if rejected else [])
        table.add_row(name, *cells, ", ".join(summary["shots"][name]))
    return table


@app.command()
def generate(
    config: Path = typer.Argument(..., help="YAML config file (see configs/demo.yaml).", parser=non_empty_path),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of run folders (overrides run.out_dir)."),
    dask_workers: int = typer.Option(
        0, min=0, max=64, help="Fan classes out over a local Dask cluster of this many processes (0 to 64)."
    ),
    dask_address: Optional[str] = typer.Option(None, help="Fan out over an existing Dask scheduler (tcp://host:8786)."),
    dask_cluster_class: Optional[str] = typer.Option(
        None, help="Dask cluster class, e.g. dask_cuda.LocalCUDACluster (one worker per GPU)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Print Prefect's tracebacks here, not only to the log file."),
) -> None:
    """Run the generation flow on a config and print the run folder and its summary."""
    try:
        cfg = load_config(config, {"run.out_dir": out} if out is not None else None)
    except (ValueError, FileNotFoundError) as err:
        config_failure(err, config, load_config)
    from maskforge.flows.cli_run import command_log, ends_cleanly_on_signals
    from maskforge.flows.generate import generate_flow
    from maskforge.tasks.preflight import preflight

    try:
        preflight(cfg)  # before the Prefect server starts: a deterministic fault costs seconds and leaves no run folder
        flow = generate_flow(dask_workers, dask_address, dask_cluster_class)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    log_file = command_log("generate", verbose)
    with ends_cleanly_on_signals(watch=False):  # survive_api_loss keeps the API alive itself
        try:
            result = survive_api_loss(lambda: flow(config=cfg), API_RESTARTS, log=console.print)
        except (DatasetError, ValueError, FileNotFoundError, OSError) as err:
            fail(f"{err}{'' if verbose else f' (traceback in {log_file})'}")
    reader = RunReader(result["url"])
    console.print(summary_table(reader.summary))
    console.print(f"run folder: {result['url']}")


@app.command()
def serve(
    port: int = typer.Option(4200, min=1, max=65535, help="Port of the Prefect server on 127.0.0.1."),
    timeout: float = typer.Option(180.0, min=1, max=3600, help="Seconds to wait for the server to become healthy."),
) -> None:
    """Start a local Prefect server (SQLite, loopback), the process work pool, every deployment and a worker."""
    from maskforge.flows.serve import serve as serve_all

    try:
        serve_all(Path.cwd(), port, timeout, log=console.print)
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        fail(str(err))
