"""`maskforge maskdiff train|eval`: few-shot instance segmentation with a mask-diffusion head.

Declarations only at the top: each command imports its flow and model modules when it runs, after its config
validated (LAZY in tests/test_layers.py), so `--help`, usage and config errors never import torch or Prefect."""

from __future__ import annotations

from functools import partial
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
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff.aggregate import draws_caption, draws_table, parse_data_seeds, seed_config
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
    data_seeds: Optional[str] = typer.Option(
        None,
        "--data-seeds",
        help="As the paper reports: train (if needed) and evaluate the K-shot stage of each TFA data seed, e.g. 0-9, "
        "then mean ± std over draws and over samplings (flow maskdiff_draws).",
    ),
    retries: int = typer.Option(1, "--retries", min=0, max=5, help="With --data-seeds: retries of a failed seed."),
) -> None:
    """Run the Prefect flow eval_maskdiff: COCO segm / bbox AP (pycocotools), base and novel; a row appended. With
    --data-seeds, the flow maskdiff_draws over those seeds (each seed's row appended, the summary written as JSON)."""
    if data_seeds is not None:
        _maskdiff_draws(config, out, shots, synthetic, data_seeds, retries)
        return
    result = _maskdiff_run("eval_maskdiff", config, out, "maskdiff-eval", _maskdiff_overrides(shots, seed, synthetic))
    from maskforge.tasks.maskdiff.evaluate import summary_table as maskdiff_summary_table

    rows = maskdiff_summary_table(result)
    where = f"fold {result['fold']}"
    if result.get("class_split") == "tfa":  # say which benchmark: TFA's split, its eval split and K-shot source
        where = f"TFA's split ({result['split']}, K-shot set: {result['kshot_source']})"
    title = (
        f"MaskDiff on {result['dataset']} {where}, {result['shots']}-shot (data seed "
        f"{result['data_seed']}): {result['images']} images, {result['sampling_seeds']} samplings (%)"
    )
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"benchmark rows: {result['table_file']}", soft_wrap=True)


def _maskdiff_draws(
    config: Path, out: Optional[str], shots: Optional[int], synthetic: Optional[list[str]], seeds: str, retries: int
) -> None:
    """`maskforge maskdiff eval --data-seeds`: validate the seeds and the config, pre-flight the first seed's training
    inputs, run the flow maskdiff_draws, print the draws table; exit 1 when a seed failed (it is in the report)."""
    try:
        seed_list = parse_data_seeds(seeds)
    except ConfigError as err:
        fail(str(err))
    cfg = learner_config(load_maskdiff_config, config, out, _maskdiff_overrides(shots, None, synthetic))
    from maskforge.tasks.maskdiff.preflight import check_train_inputs

    preflight(check_train_inputs, seed_config(cfg, seed_list[0]))
    from maskforge.flows.cli_run import run_flow
    from maskforge.flows.maskdiff import maskdiff_draws

    report = run_flow(partial(maskdiff_draws, data_seeds=seed_list, retries=retries), cfg, "maskdiff-draws", (OSError,))
    what = f"MaskDiff {cfg.split} {cfg.finetune.shots}-shot on {cfg.eval.split}"
    rows = draws_table(report)
    if rows:
        table = Table(title=f"{what}: mean ± std over draws, segm std over samplings (%)")
        for col in rows[0]:
            table.add_column(col)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)
    console.print(draws_caption(report, what), soft_wrap=True)
    console.print(f"draws report: {report['draws_file']}", soft_wrap=True)
    if report["failed"]:
        fail(f"{len(report['failed'])} data seed(s) failed; see {report['draws_file']}")
