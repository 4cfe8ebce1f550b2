"""HSNet behind the learner protocol (tasks/learner.py): its stages, flows, commands and deployment entry points."""

from __future__ import annotations

from maskforge.storage.results import HSNET_PROTOCOL
from maskforge.tasks.episodic import EPISODE_LOG, EVAL_OPTIONS, EVAL_PARAMS
from maskforge.tasks.hsnet.config import HsnetConfig, load_hsnet_config
from maskforge.tasks.learner import (
    DATASET,
    FOLD,
    ROOT,
    Command,
    Deployment,
    Flow,
    Inspect,
    Learner,
    Option,
    Stage,
)

LEARNER = Learner(
    name="hsnet",
    title="HSNet",
    help="HSNet few-shot segmenter: load checkpoints, train, evaluate.",
    package="maskforge.tasks.hsnet",
    config=load_hsnet_config,
    config_class=HsnetConfig,
    example="hsnet-toy.yaml",
    protocol=HSNET_PROTOCOL,
    stages={
        "train": Stage(
            ".train:train_hsnet", "train-hsnet", "the whole training loop", lambda r: f"checkpoint: {r['checkpoint']}"
        ),
        "eval": Stage(".eval:eval_hsnet", "eval-hsnet", "all episodes", EPISODE_LOG),
    },
    flows=(
        Flow(
            "train_hsnet",
            "Train HSNet on an HSNet config; returns the training report (checkpoint path, losses, seconds).",
            ("train",),
            check="check_train_inputs",
        ),
        Flow(
            "eval_hsnet",
            "Evaluate an HSNet checkpoint; appends one benchmark row per setting and publishes a table artifact.",
            ("eval",),
            check="check_eval_inputs",
            record=True,
        ),
    ),
    record=".eval:record",
    chain="eval_hsnet_fold",
    errors=("maskforge.models.hsnet.checkpoint:CheckpointError",),
    load=Inspect(
        ".load:load_report",
        "HSNet checkpoint: the authors' .pt or a maskforge .safetensors.",
        "Load a checkpoint strictly; print its backbone, learnable parameter count and any missing/unexpected keys.",
    ),
    commands=(
        Command(
            "train",
            "train_hsnet",
            "Run the Prefect flow train_hsnet: episodic training on the fold's base classes; prints the checkpoint.",
            "maskforge.tasks.learner:show_training",
            (
                Option(
                    "--synthetic",
                    "train.synthetic_run",
                    str,
                    "A maskforge run whose base-class samples join the supports (train.synthetic_run).",
                ),
            ),
        ),
        Command(
            "eval",
            "eval_hsnet",
            "Run the Prefect flow eval_hsnet: episodic evaluation, benchmark rows appended, table printed.",
            ".eval:show",
            (
                *EVAL_OPTIONS,
                Option(
                    "--checkpoint",
                    "eval.checkpoint",
                    str,
                    "An HSNet checkpoint (overrides eval.checkpoint), e.g. the shipped toy one.",
                ),
            ),
        ),
    ),
    deployments=(
        Deployment(
            "train_hsnet_fold",
            "train-hsnet-fold",
            "Train HSNet on one (dataset, fold) from an HSNet config file.",
            "train_hsnet",
            (DATASET, FOLD, ROOT),
        ),
        Deployment(
            "eval_hsnet_fold",
            "eval-hsnet-fold",
            "Evaluate HSNet on one (dataset, fold) from an HSNet config file (checkpoint and shots overridable); "
            "synthetic_run (a run folder, a selector like latest:toy/0, or the nightly chain's event URL) adds its "
            "setting with synthetic_per_class (default: the file's) generated supports per class.",
            "eval_hsnet",
            EVAL_PARAMS,
        ),
    ),
)
