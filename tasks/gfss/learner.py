"""The GFSS learners (FINETUNE, GAPS) behind the learner protocol (tasks/learner.py): base stage, incremental novel
stage (the shard consumer), PIFS evaluation; their flows, commands and deployment entry points."""

from __future__ import annotations

from maskforge.storage.results import GFSS_PROTOCOL
from maskforge.tasks.gfss.config import GfssConfig, load_gfss_config
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
    Shown,
    Stage,
)

METHOD = Option("--method", "novel.method", str, "gaps, finetune or shot-only (novel.method).")


def _novel_log(report: dict) -> str:
    """The novel stage's log line: where it wrote, how many run seeds and steps."""
    return f"novel stage: {report['novel_dir']} ({len(report['runs'])} runs x {len(report['task_stream'])} steps)"


def show_novel(report: dict) -> Shown:
    """What `maskforge gfss train-novel` prints: runs x steps of the setting, then the stage folder."""
    return Shown(
        (
            f"{report['setting']}: {len(report['runs'])} runs x {len(report['task_stream'])} steps",
            f"novel stage: {report['novel_dir']}",
        )
    )


LEARNER = Learner(
    name="gfss",
    title="GFSS",
    help="GFSS learners (FINETUNE, GAPS, with or without synthetic runs): train, evaluate, load.",
    package="maskforge.tasks.gfss",
    config=load_gfss_config,
    config_class=GfssConfig,
    example="gfss-toy.yaml",
    protocol=GFSS_PROTOCOL,
    out_help="Parent folder of stage folders (overrides run.out_dir).",
    stages={
        "base": Stage(
            ".base:train_gfss_base",
            "train-gfss-base",
            "the whole base training loop",
            lambda r: f"base checkpoint: {r['checkpoint']}",
        ),
        "novel": Stage(".novel:train_gfss_novel", "train-gfss-novel", "every run seed and step", _novel_log),
        "eval": Stage(
            ".evaluate:eval_gfss", "eval-gfss", "every run and step checkpoint on the val split", ".evaluate:log_line"
        ),
    },
    flows=(
        Flow(
            "train_gfss_base",
            "Train the GFSS base model on the fold's leakage-free base set; returns the training report.",
            ("base",),
            check="check_base_inputs",
        ),
        Flow(
            "train_gfss_novel",
            "Run the incremental stage (gaps, finetune or shot-only; novel.synthetic_runs when set) for every run "
            "seed.",
            ("novel",),
            check="check_novel_inputs",
        ),
        Flow(
            "eval_gfss",
            "Evaluate the novel stage's checkpoints (PIFS); appends the benchmark row, publishes table and trend.",
            ("eval",),
            check="check_eval_inputs",
            record=True,
        ),
        Flow(
            "gfss_novel_eval",
            "Novel stage then evaluation: what a deployment runs after a nightly regeneration.",
            ("train_gfss_novel", "eval_gfss"),
            check="check_novel_eval_inputs",
        ),
        Flow(
            "gfss_base_novel_eval",
            "Base stage (reused when trained), novel stage, evaluation: what the nightly chain runs, no person needed "
            "to train the base first.",
            ("train_gfss_base", "gfss_novel_eval"),
            check="check_base_novel_eval_inputs",
        ),
    ),
    record=".evaluate:record",
    chain="train_gfss_novel_fold",
    errors=(
        "maskforge.models.gfss.checkpoint:GfssCheckpointError",
        "maskforge.models.gfss.network:GfssModelError",
    ),
    load=Inspect(
        ".load:load_report",
        "GFSS checkpoint: the GAPS authors' *_final.pt or ours .safetensors.",
        "Load a checkpoint strictly; print its classes and any missing / unexpected / mis-shaped keys (exit 1 on any).",
    ),
    commands=(
        Command(
            "train-base",
            "train_gfss_base",
            "Run the Prefect flow train_gfss_base: the base model on the fold's leakage-free base set.",
            "maskforge.tasks.learner:show_training",
        ),
        Command(
            "train-novel",
            "train_gfss_novel",
            "Run the Prefect flow train_gfss_novel: imprint and fine-tune per run seed and step.",
            ".learner:show_novel",
            (
                METHOD,
                Option(
                    "--synthetic",
                    "novel.synthetic_runs",
                    str,
                    "A completed maskforge run joining the data (repeatable; novel.synthetic_runs).",
                    many=True,
                ),
            ),
        ),
        Command(
            "eval",
            "eval_gfss",
            "Run the Prefect flow eval_gfss: PIFS evaluation, benchmark row appended, table printed.",
            ".evaluate:show",
            (
                METHOD,
                Option(
                    "--synthetic", "novel.synthetic_runs", str, "As in train-novel (novel.synthetic_runs).", many=True
                ),
            ),
        ),
    ),
    deployments=(
        Deployment(
            "train_gfss_base_fold",
            "train-gfss-base",
            "Train the GFSS base model of one (dataset, fold) from a GFSS config file.",
            "train_gfss_base",
            (DATASET, FOLD, ROOT),
        ),
        Deployment(
            "train_gfss_novel_fold",
            "train-gfss-novel",
            "Run the GFSS novel stage of one (dataset, fold), then (evaluate) its PIFS evaluation into the results "
            "table; synthetic_runs names completed maskforge runs (or selectors like last:7:toy/0); synthetic_run, "
            "one more (the nightly chain's trigger passes the new run's URL here); train_base (with evaluate): train "
            "the base stage first when it is not trained (reused when it is), so a chain needs no person.",
            "gfss_novel_eval",
            (
                DATASET,
                FOLD,
                ROOT,
                Param("method", str | None, key="novel.method"),
                Param("synthetic_runs", list[str] | None, key="novel.synthetic_runs"),
                Param("evaluate", bool, True),
                Param("synthetic_run", str | None, key="novel.synthetic_runs", append=True),
                Param("train_base", bool, False),
            ),
            choose=(("evaluate", False, "train_gfss_novel"), ("train_base", True, "gfss_base_novel_eval")),
        ),
    ),
)
