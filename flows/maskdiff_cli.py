"""`maskforge maskdiff train|eval`: few-shot instance segmentation with a mask-diffusion head.

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
from maskforge.flows.console import console, preflight
from maskforge.tasks.maskdiff.config import load_maskdiff_config

maskdiff_app = typer.Typer(
    help="MaskDiff few-shot instance segmentation (TFA detector + mask-diffusion head): train, evaluate.",
    no_args_is_help=True,
)


def _maskdiff_run(name: str, config: Path, out: Optional[str], command: str, overrides: dict):
    """Load a MaskDiff config (--out overriding run.out_dir, option overrides), run the pre-flight of the flow's
    stages (before Prefect starts) and the flow `name` of flows/maskdiff.py with the log in a file; a plain one-line
    error on failure."""
    cfg = learner_config(load_maskdiff_config, config, out, overrides)
    from maskforge.tasks.maskdiff.preflight import check_eval_inputs, check_train_inputs

    preflight(check_train_inputs if name == "train_maskdiff" else check_eval_inputs, cfg)
    from maskforge.flows import maskdiff as maskdiff_flows
    from maskforge.flows.cli_run import run_flow

    return run_flow(getattr(maskdiff_flows, name), cfg, command, (OSError,))


def _maskdiff_overrides(shots: Optional[int], seed: Optional[int], synthetic: Optional[list[str]] = None) -> dict:
    """Dotted-key overrides of the K-shot options."""
    return given({"finetune.shots": shots, "finetune.data_seed": seed, "finetune.synthetic_runs": synthetic})


@maskdiff_app.command("train")
def maskdiff_train(
    config: Path = typer.Argument(
        ..., help="MaskDiff YAML config (see configs/maskdiff-toy.yaml).", parser=non_empty_path
    ),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    shots: Optional[int] = typer.Option(None, "--shots", help="K (1, 2, 3, 5, 10, 30; finetune.shots)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="TFA data seed 0-9 (finetune.data_seed)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="A maskforge run adding novel-class K-shot instances (repeatable)."
    ),
) -> None:
    """Run the Prefect flow train_maskdiff: the base stage (reused when trained), then the K-shot stage."""
    report = _maskdiff_run("train_maskdiff", config, out, "maskdiff-train", _maskdiff_overrides(shots, seed, synthetic))
    console.print(f"base stage: {report['base']['stage_dir']}", soft_wrap=True)
    console.print(f"K-shot stage: {report['finetune']['stage_dir']}", soft_wrap=True)


@maskdiff_app.command("eval")
def maskdiff_eval(
    config: Path = typer.Argument(
        ..., help="MaskDiff YAML config (see configs/maskdiff-toy.yaml).", parser=non_empty_path
    ),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    shots: Optional[int] = typer.Option(None, "--shots", help="K of the stage to evaluate (finetune.shots)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="TFA data seed of the stage (finetune.data_seed)."),
    synthetic: Optional[list[str]] = typer.Option(None, "--synthetic", help="As in train (finetune.synthetic_runs)."),
) -> None:
    """Run the Prefect flow eval_maskdiff: COCO segm / bbox AP (pycocotools), base and novel; a row appended."""
    result = _maskdiff_run("eval_maskdiff", config, out, "maskdiff-eval", _maskdiff_overrides(shots, seed, synthetic))
    from maskforge.tasks.maskdiff.evaluate import summary_table as maskdiff_summary_table

    rows = maskdiff_summary_table(result)
    title = (
        f"MaskDiff on {result['dataset']} fold {result['fold']}, {result['shots']}-shot (data seed "
        f"{result['data_seed']}): {result['images']} images, {result['sampling_seeds']} samplings (%)"
    )
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"benchmark rows: {result['table_file']}", soft_wrap=True)
