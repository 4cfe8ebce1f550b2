"""`maskforge gfss load|train-base|train-novel|eval`: the GFSS learners (FINETUNE, GAPS).

Declarations only at the top: each command imports its flow and model modules when it runs, after its config
validated (LAZY in tests/test_layers.py), so `--help`, usage and config errors never import torch or Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from maskforge.flows.cli_support import (
    given,
    learner_config,
    non_empty_path,
)
from maskforge.flows.console import console, fail, preflight
from maskforge.tasks.gfss.config import load_gfss_config

gfss_app = typer.Typer(
    help="GFSS learners (FINETUNE, GAPS, with or without synthetic runs): train, evaluate, load.", no_args_is_help=True
)


def _gfss_config(config: Path, out: Optional[str], overrides: dict | None = None):
    """Load a GFSS config (--out overriding run.out_dir, plus option overrides), or exit 1 with the error."""
    return learner_config(load_gfss_config, config, out, overrides)


#: The pre-flight check (tasks/gfss/preflight.py) each GFSS flow the CLI runs starts with.
PREFLIGHT = {
    "train_gfss_base": "check_base_inputs",
    "train_gfss_novel": "check_novel_inputs",
    "eval_gfss": "check_eval_inputs",
}


def _gfss_run(name: str, cfg, command: str):
    """Run the GFSS flow `name` of flows/gfss.py with the log in a file, after its pre-flight (before Prefect starts:
    a wrong input exits 1 on one line in seconds); a plain one-line error on failure."""
    import maskforge.tasks.gfss.preflight as checks

    preflight(getattr(checks, PREFLIGHT[name]), cfg)
    from maskforge.flows import gfss as gfss_flows
    from maskforge.flows.cli_run import run_flow
    from maskforge.models.gfss.checkpoint import GfssCheckpointError
    from maskforge.models.gfss.network import GfssModelError

    flow = getattr(gfss_flows, name)
    return run_flow(flow, cfg, command, (GfssCheckpointError, GfssModelError))


@gfss_app.command("load")
def gfss_load(
    checkpoint: Path = typer.Argument(
        ..., help="GFSS checkpoint: the GAPS authors' *_final.pt or ours .safetensors.", parser=non_empty_path
    ),
) -> None:
    """Load a checkpoint strictly; print its classes and any missing / unexpected / mis-shaped keys (exit 1 on any)."""
    from maskforge.models.gfss.checkpoint import GfssCheckpointError, authors_key_report, load_gfss
    from maskforge.models.gfss.network import GfssModelError

    if checkpoint.suffix == ".safetensors":
        try:
            net, meta = load_gfss(str(checkpoint))
        except (GfssCheckpointError, GfssModelError) as err:
            fail(str(err))
        console.print(f"checkpoint: {checkpoint}", soft_wrap=True)
        console.print(f"format: maskforge safetensors; backbone {net.spec.backbone}, {net.spec.num_classes} classes")
        console.print("loaded strictly: all keys match")
        return
    try:
        report = authors_key_report(str(checkpoint))
    except (GfssCheckpointError, GfssModelError) as err:
        fail(str(err))
    console.print(f"checkpoint: {checkpoint}", soft_wrap=True)
    console.print(f"format: GAPS authors' layout (backbone / head); {report['num_classes']} classes")
    console.print(f"backbone tensors: {report['backbone_tensors']}, head tensors: {report['head_tensors']}")
    for name in ("missing", "unexpected", "mismatched"):
        console.print(f"{name} keys: {len(report[name])}")
        for key in report[name]:
            console.print(f"  {key}", soft_wrap=True)
    bad = sum(len(report[n]) for n in ("missing", "unexpected", "mismatched"))
    if bad:
        fail(f"{checkpoint} does not load strictly: {bad} key problem(s) listed above")
    console.print("loaded strictly: all keys match")


@gfss_app.command("train-base")
def gfss_train_base(
    config: Path = typer.Argument(..., help="GFSS YAML config (see configs/gfss-toy.yaml).", parser=non_empty_path),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
) -> None:
    """Run the Prefect flow train_gfss_base: the base model on the fold's leakage-free base set."""
    report = _gfss_run("train_gfss_base", _gfss_config(config, out), "gfss-train-base")
    console.print(f"trained {report['steps']} steps in {report['seconds']} s; final loss {report['losses'][-1]:.4f}")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)


@gfss_app.command("train-novel")
def gfss_train_novel(
    config: Path = typer.Argument(..., help="GFSS YAML config (see configs/gfss-toy.yaml).", parser=non_empty_path),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    method: Optional[str] = typer.Option(None, "--method", help="gaps, finetune or shot-only (novel.method)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="A completed maskforge run joining the data (repeatable; novel.synthetic_runs)."
    ),
) -> None:
    """Run the Prefect flow train_gfss_novel: imprint and fine-tune per run seed and step."""
    overrides = given({"novel.method": method, "novel.synthetic_runs": synthetic})
    report = _gfss_run("train_gfss_novel", _gfss_config(config, out, overrides), "gfss-train-novel")
    console.print(f"{report['setting']}: {len(report['runs'])} runs x {len(report['task_stream'])} steps")
    console.print(f"novel stage: {report['novel_dir']}", soft_wrap=True)


@gfss_app.command("eval")
def gfss_eval(
    config: Path = typer.Argument(..., help="GFSS YAML config (see configs/gfss-toy.yaml).", parser=non_empty_path),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    method: Optional[str] = typer.Option(None, "--method", help="gaps, finetune or shot-only (novel.method)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="As in train-novel (novel.synthetic_runs)."
    ),
) -> None:
    """Run the Prefect flow eval_gfss: PIFS evaluation, benchmark row appended, table printed."""
    overrides = given({"novel.method": method, "novel.synthetic_runs": synthetic})
    result = _gfss_run("eval_gfss", _gfss_config(config, out, overrides), "gfss-eval")
    title = (
        f"GFSS {result['setting']} on {result['dataset']} fold {result['fold']}, {result['shots']}-shot: "
        f"{result['images']} images, {len(result['runs'])} run seeds (mean ± std, %)"
    )
    from maskforge.tasks.gfss.evaluate import summary_table as gfss_summary_table

    table = Table(title=title)
    for col in ("report", "base mIoU", "novel mIoU", "HM"):
        table.add_column(col)
    for row in gfss_summary_table(result):
        table.add_row(row["report"], row["base mIoU"], row["novel mIoU"], row["HM"])
    console.print(table)
    console.print(f"benchmark rows: {result['table_file']}", soft_wrap=True)
