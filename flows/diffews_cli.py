"""`maskforge diffews load|train|eval`: Stable Diffusion's UNet as a few-shot segmenter.

Declarations only at the top: each command imports its flow and model modules when it runs, after its config
validated (LAZY in tests/test_layers.py), so `--help`, usage and config errors never import torch or Prefect."""

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
from maskforge.storage.marked_folder import COMPLETE as DIFFEWS_COMPLETE
from maskforge.tasks.diffews.config import load_diffews_config

diffews_app = typer.Typer(
    help="DiffewS (Stable Diffusion's UNet as a few-shot segmenter): load, train, evaluate.", no_args_is_help=True
)


def _diffews_run(name: str, config: Path, out: Optional[str], command: str, overrides: dict | None = None):
    """Load a DiffewS config (--out overriding run.out_dir), run the stage's pre-flight (before Prefect starts) and
    the flow `name` of flows/diffews.py with the log in a file; a plain one-line error on failure."""
    cfg = learner_config(load_diffews_config, config, out, overrides)
    from maskforge.tasks.diffews.preflight import check_eval_inputs, check_train_inputs

    preflight(check_train_inputs if name == "train_diffews" else check_eval_inputs, cfg)
    from maskforge.flows import diffews as diffews_flows
    from maskforge.flows.cli_run import run_flow
    from maskforge.models.diffews.checkpoint import DiffewsCheckpointError
    from maskforge.models.loading import ModelLoadError

    flow = getattr(diffews_flows, name)
    return run_flow(flow, cfg, command, (DiffewsCheckpointError, ModelLoadError))


@diffews_app.command("load")
def diffews_load(
    folder: Path = typer.Argument(
        ...,
        help="A DiffewS UNet folder, the folder holding it as unet/ (the authors' scripts), or a maskforge checkpoint.",
        parser=non_empty_path,
    ),
) -> None:
    """Check a DiffewS UNet strictly: print missing / unexpected / mis-shaped keys (exit 1 on any); a maskforge
    checkpoint folder's files are checked against the sha256 its COMPLETE.json recorded first, as evaluation does."""
    from maskforge.models.diffews.checkpoint import DiffewsCheckpointError, load_diffews
    from maskforge.models.diffews.checkpoint import key_report as diffews_key_report
    from maskforge.models.diffews.network import DiffewsModelError

    ours = (folder / DIFFEWS_COMPLETE).is_file()
    unet_dir = folder / "unet" if ours else folder  # key_report also takes the folder holding unet/ (authors')
    try:
        if ours:
            load_diffews(folder)  # verifies every file's sha256 against the marker
        report, unet, _ = diffews_key_report(unet_dir, str(folder))
    except (DiffewsCheckpointError, DiffewsModelError) as err:
        fail(str(err))
    console.print(f"weights: {report.file}", soft_wrap=True)
    console.print(f"tensors: {report.tensors}; conv_in_ref: {tuple(unet.conv_in_ref.weight.shape)}")
    for name in ("missing", "unexpected", "mis_shaped"):
        keys = getattr(report, name)
        console.print(f"{name.replace('_', '-')} keys: {len(keys)}")
        for key in keys:
            console.print(f"  {key}", soft_wrap=True)
    if not report.ok:
        fail(f"{folder} does not load strictly: {report.summary()}")
    console.print("loaded strictly: all keys match")


@diffews_app.command("train")
def diffews_train(
    config: Path = typer.Argument(
        ..., help="DiffewS YAML config (see configs/diffews-toy.yaml).", parser=non_empty_path
    ),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="A maskforge run whose base-class samples join training (repeatable)."
    ),
) -> None:
    """Run the Prefect flow train_diffews: episodic training on the fold's base classes; prints the checkpoint."""
    overrides = {"train.synthetic_runs": synthetic} if synthetic else None
    report = _diffews_run("train_diffews", config, out, "diffews-train", overrides)
    console.print(f"trained {report['steps']} steps in {report['seconds']} s; final loss {report['losses'][-1]:.4f}")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)


@diffews_app.command("eval")
def diffews_eval(
    config: Path = typer.Argument(
        ..., help="DiffewS YAML config (see configs/diffews-toy.yaml).", parser=non_empty_path
    ),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
    shots: Optional[int] = SHOTS_OPTION,
    synthetic: Optional[str] = SYNTHETIC_OPTION,
    per_class: Optional[int] = PER_CLASS_OPTION,
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="A DiffewS checkpoint or UNet folder (overrides eval.checkpoint)."
    ),
) -> None:
    """Run the Prefect flow eval_diffews: HSNet-protocol episodes, benchmark rows appended, table printed."""
    overrides = episode_overrides(shots, synthetic, per_class, checkpoint)
    result = _diffews_run("eval_diffews", config, out, "diffews-eval", overrides)
    print_episodes("DiffewS", result)
