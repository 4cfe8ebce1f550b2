"""DiffewS (Stable Diffusion's UNet as a few-shot segmenter) behind the learner protocol (tasks/learner.py): its
stages, flows, commands and deployment entry points; it evaluates on HSNet's episodic protocol."""

from __future__ import annotations

from maskforge.storage.results import HSNET_PROTOCOL
from maskforge.tasks.diffews.config import DiffewsConfig, load_diffews_config
from maskforge.tasks.episodic import EPISODE_LOG, EVAL_OPTIONS, EVAL_PARAMS
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
    Param,
    Stage,
)

LEARNER = Learner(
    name="diffews",
    title="DiffewS",
    help="DiffewS (Stable Diffusion's UNet as a few-shot segmenter): load, train, evaluate.",
    package="maskforge.tasks.diffews",
    config=load_diffews_config,
    config_class=DiffewsConfig,
    example="diffews-toy.yaml",
    protocol=HSNET_PROTOCOL,
    stages={
        "train": Stage(
            ".train:train_diffews",
            "train-diffews",
            "the whole training loop",
            lambda r: f"checkpoint: {r['checkpoint']}",
        ),
        "eval": Stage(".evaluate:eval_diffews", "eval-diffews", "all episodes", EPISODE_LOG),
    },
    flows=(
        Flow(
            "train_diffews",
            "Train DiffewS on a DiffewS config; returns the training report (checkpoint folder, losses, seconds).",
            ("train",),
            check="check_train_inputs",
        ),
        Flow(
            "eval_diffews",
            "Evaluate a DiffewS checkpoint; appends one benchmark row per setting, publishes table and trend "
            "artifacts.",
            ("eval",),
            check="check_eval_inputs",
            record=True,
        ),
        Flow(
            "train_eval_diffews",
            "Train (or reuse the trained checkpoint), then evaluate: what a nightly deployment runs.",
            ("train_diffews", "eval_diffews"),
        ),
    ),
    record=".evaluate:record",
    chain="eval_diffews_fold",
    errors=(
        "maskforge.models.diffews.checkpoint:DiffewsCheckpointError",
        "maskforge.models.loading:ModelLoadError",
    ),
    load=Inspect(
        ".load:load_report",
        "A DiffewS UNet folder, the folder holding it as unet/ (the authors' scripts), or a maskforge checkpoint.",
        "Check a DiffewS UNet strictly: print missing / unexpected / mis-shaped keys (exit 1 on any); a maskforge "
        "checkpoint folder's files are checked against the sha256 its COMPLETE.json recorded first, as evaluation "
        "does.",
    ),
    commands=(
        Command(
            "train",
            "train_diffews",
            "Run the Prefect flow train_diffews: episodic training on the fold's base classes; prints the checkpoint.",
            "maskforge.tasks.learner:show_training",
            (
                Option(
                    "--synthetic",
                    "train.synthetic_runs",
                    str,
                    "A maskforge run whose base-class samples join training (repeatable).",
                    many=True,
                ),
            ),
        ),
        Command(
            "eval",
            "eval_diffews",
            "Run the Prefect flow eval_diffews: HSNet-protocol episodes, benchmark rows appended, table printed.",
            ".evaluate:show",
            (
                *EVAL_OPTIONS,
                Option(
                    "--checkpoint",
                    "eval.checkpoint",
                    str,
                    "A DiffewS checkpoint or UNet folder (overrides eval.checkpoint).",
                ),
            ),
        ),
    ),
    deployments=(
        Deployment(
            "train_diffews_fold",
            "train-diffews",
            "Train DiffewS on one (dataset, fold) from a DiffewS config file; synthetic_runs add base-class samples.",
            "train_diffews",
            (DATASET, FOLD, ROOT, Param("synthetic_runs", list[str] | None, key="train.synthetic_runs")),
        ),
        Deployment(
            "eval_diffews_fold",
            "eval-diffews",
            "Evaluate DiffewS on one (dataset, fold) from a DiffewS config file; synthetic_run (e.g. the nightly "
            "regeneration's folder) adds the KR+NS setting with synthetic_per_class (default: the file's) samples.",
            "eval_diffews",
            EVAL_PARAMS,
        ),
    ),
)
