"""`maskforge hsnet load|train|eval`: HSNet checkpoints, training and episodic evaluation.

Declarations only at the top: each command imports its flow and model modules when it runs (LAZY in
tests/test_layers.py), so `maskforge hsnet --help` and a config error never import torch or Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskforge.flows.cli_support import (
    PER_CLASS_OPTION,
    SHOTS_OPTION,
    SYNTHETIC_OPTION,
    episode_overrides,
    learner_config,
    non_empty_path,
    print_episodes,
)
from maskforge.flows.console import console, fail, preflight
from maskforge.tasks.hsnet.config import load_hsnet_config

hsnet_app = typer.Typer(help="HSNet few-shot segmenter: load checkpoints, train, evaluate.", no_args_is_help=True)


@hsnet_app.command("load")
def hsnet_load(
    checkpoint: Path = typer.Argument(
        ..., help="HSNet checkpoint: the authors' .pt or a maskforge .safetensors.", parser=non_empty_path
    ),
) -> None:
    """Load a checkpoint strictly; print its backbone, learnable parameter count and any missing/unexpected keys."""
    from maskforge.models.hsnet.checkpoint import CheckpointError, inspect_checkpoint
    from maskforge.models.hsnet.model import learnable_parameters

    try:
        net, report, meta = inspect_checkpoint(checkpoint)
    except CheckpointError as err:
        fail(str(err))
    console.print(f"checkpoint: {checkpoint}", soft_wrap=True)
    console.print(f"format: {'maskforge safetensors' if meta is not None else 'HSNet state dict (module.-prefixed)'}")
    console.print(f"backbone: {net.spec.backbone}")
    console.print(f"learnable parameters: {learnable_parameters(net)}")
    console.print(f"missing keys: {len(report.missing)}", soft_wrap=True)
    for key in report.missing:
        console.print(f"  {key}", markup=False)
    console.print(f"unexpected keys: {len(report.unexpected)}")
    for key in report.unexpected:
        console.print(f"  {key}", markup=False)
    console.print(f"shape mismatches: {len(report.mismatched)}")
    for key in report.mismatched:
        console.print(f"  {key}", markup=False)
    if not report.ok:
        fail(f"{checkpoint} does not load strictly: {report.describe(limit=3)}")
    console.print("loaded strictly: all keys match")


@hsnet_app.command("train")
def hsnet_train(
    config: Path = typer.Argument(..., help="HSNet YAML config (see configs/hsnet-toy.yaml).", parser=non_empty_path),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
    synthetic: Optional[str] = typer.Option(
        None, "--synthetic", help="A maskforge run whose base-class samples join the supports (train.synthetic_run)."
    ),
) -> None:
    """Run the Prefect flow train_hsnet: episodic training on the fold's base classes; prints the checkpoint."""
    cfg = learner_config(load_hsnet_config, config, out, {"train.synthetic_run": synthetic})
    from maskforge.tasks.hsnet.preflight import check_train_inputs

    preflight(check_train_inputs, cfg)
    from maskforge.flows.cli_run import run_flow
    from maskforge.flows.hsnet import train_hsnet
    from maskforge.models.hsnet.checkpoint import CheckpointError

    report = run_flow(train_hsnet, cfg, "hsnet-train", (CheckpointError,))
    console.print(f"trained {report['steps']} steps in {report['seconds']} s; final loss {report['losses'][-1]:.4f}")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)


@hsnet_app.command("eval")
def hsnet_eval(
    config: Path = typer.Argument(..., help="HSNet YAML config (see configs/hsnet-toy.yaml).", parser=non_empty_path),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
    shots: Optional[int] = SHOTS_OPTION,
    synthetic: Optional[str] = SYNTHETIC_OPTION,
    per_class: Optional[int] = PER_CLASS_OPTION,
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="An HSNet checkpoint (overrides eval.checkpoint), e.g. the shipped toy one."
    ),
) -> None:
    """Run the Prefect flow eval_hsnet: episodic evaluation, benchmark rows appended, table printed."""
    cfg = learner_config(load_hsnet_config, config, out, episode_overrides(shots, synthetic, per_class, checkpoint))
    from maskforge.tasks.hsnet.preflight import check_eval_inputs

    preflight(check_eval_inputs, cfg)
    from maskforge.flows.cli_run import run_flow
    from maskforge.flows.hsnet import eval_hsnet
    from maskforge.models.hsnet.checkpoint import CheckpointError

    result = run_flow(eval_hsnet, cfg, "hsnet-eval", (CheckpointError,))
    print_episodes(f"HSNet {result['backbone']}", result)
