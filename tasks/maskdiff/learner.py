"""MaskDiff (few-shot instance segmentation: TFA detector + mask-diffusion head) behind the learner protocol
(tasks/learner.py): base and K-shot stages, COCO AP evaluation, the paper's draws study; its flows, commands and
deployment entry points, per (dataset, fold) and on TFA's COCO split (no fold axis)."""

from __future__ import annotations

from maskforge.storage.results import FSIS_PROTOCOL
from maskforge.tasks.learner import (
    DATASET,
    FOLD,
    ROOT,
    Command,
    Deployment,
    Flow,
    Learner,
    Option,
    Param,
    Shown,
    Stage,
    Sweep,
    SweepOption,
)
from maskforge.tasks.maskdiff.config import VOC_SPLIT, MaskdiffConfig, load_maskdiff_config

SHOTS = Param("shots", int | None, key="finetune.shots")
DATA_SEED = Param("data_seed", int | None, key="finetune.data_seed")
SYNTHETIC_RUNS = Param("synthetic_runs", list[str] | None, key="finetune.synthetic_runs")
EVALUATE = Param("evaluate", bool, True)
#: One more run (the nightly chain passes the new run's URL here), after synthetic_runs.
SYNTHETIC_RUN = Param("synthetic_run", str | None, key="finetune.synthetic_runs", append=True)
#: COCO -> VOC: a voc_root switches evaluation to VOC2012 val.
VOC_ROOT = Param("voc_root", str | None, to=lambda root: {"eval.split": VOC_SPLIT, "eval.voc_root": root})
#: evaluate: false trains only.
TRAIN_OR_BOTH = (("evaluate", False, "train_maskdiff"),)


def show_training(report: dict) -> Shown:
    """What `maskforge maskdiff train` prints: the two stage folders."""
    return Shown((f"base stage: {report['base']['stage_dir']}", f"K-shot stage: {report['finetune']['stage_dir']}"))


def _options(seed_help: str, synthetic_help: str, shots_help: str) -> tuple[Option, ...]:
    """The K-shot options of train and eval (their help differs)."""
    return (
        Option("--shots", "finetune.shots", int, shots_help),
        Option("--seed", "finetune.data_seed", int, seed_help),
        Option("--synthetic", "finetune.synthetic_runs", str, synthetic_help, many=True),
    )


LEARNER = Learner(
    name="maskdiff",
    title="MaskDiff",
    help="MaskDiff few-shot instance segmentation (TFA detector + mask-diffusion head): train, evaluate.",
    package="maskforge.tasks.maskdiff",
    config=load_maskdiff_config,
    config_class=MaskdiffConfig,
    example="maskdiff-toy.yaml",
    protocol=FSIS_PROTOCOL,
    out_help="Parent folder of stage folders (overrides run.out_dir).",
    stages={
        "base": Stage(
            ".train:train_maskdiff_base",
            "train-maskdiff-base",
            "the base stage (detector on base classes, then the mask head)",
            lambda r: f"base stage: {r['stage_dir']}",
        ),
        "finetune": Stage(
            ".train:train_maskdiff_finetune",
            "train-maskdiff-finetune",
            "the K-shot stage (surgery, last-layer fine-tuning, mask head)",
            lambda r: f"K-shot stage: {r['stage_dir']}",
        ),
        "eval": Stage(
            ".evaluate:eval_maskdiff",
            "eval-maskdiff",
            "COCO AP of the K-shot stage over every sampling seed",
            ".evaluate:log_line",
        ),
        "write_draws": Stage(
            ".aggregate:write_draws",
            "write-maskdiff-draws",
            "write the draws report (mean ± std over data seeds and samplings, failed seeds) as JSON",
            gpu=False,
        ),
    },
    flows=(
        Flow(
            "train_maskdiff",
            "Check both stages' inputs (pre-flight), train the base stage (reused when complete), then the K-shot "
            "stage; returns both reports.",
            ("base", "finetune"),
            check="check_train_inputs",
            keys=("base", "finetune"),
        ),
        Flow(
            "eval_maskdiff",
            "Evaluate the K-shot stage (segm and bbox AP, base and novel); appends the row, publishes table and trend.",
            ("eval",),
            check="check_eval_inputs",
            record=True,
        ),
        Flow(
            "train_eval_maskdiff",
            "Both training stages, then evaluation: what a deployment runs.",
            ("train_maskdiff", "eval_maskdiff"),
        ),
        Flow(
            "maskdiff_draws",
            "The paper's reporting: for each data seed, train its K-shot stage (the base stage once, reused) and "
            "evaluate it with eval.sampling_seeds samplings (a row each); then mean ± std over draws and over "
            "samplings, written as JSON (tasks/maskdiff/aggregate.py). A failed seed is retried `retries` times, "
            "then reported, never dropped.",
            sweep=Sweep(
                "data_seeds",
                "train_eval_maskdiff",
                ".aggregate:seed_config",
                ".aggregate:run_draws",
                "write_draws",
                ".aggregate:study_caption",
                "draws_file",
            ),
        ),
    ),
    record=".evaluate:record",
    errors=("builtins:OSError",),
    chain="train_maskdiff_fold",
    commands=(
        Command(
            "train",
            "train_maskdiff",
            "Run the Prefect flow train_maskdiff: the base stage (reused when trained), then the K-shot stage.",
            ".learner:show_training",
            _options(
                "TFA data seed 0-9 (finetune.data_seed).",
                "A maskforge run adding novel-class K-shot instances (repeatable).",
                "K (1, 2, 3, 5, 10, 30; finetune.shots).",
            ),
        ),
        Command(
            "eval",
            "eval_maskdiff",
            "Run the Prefect flow eval_maskdiff: COCO segm / bbox AP (pycocotools), base and novel; a row appended. "
            "With --data-seeds, the flow maskdiff_draws over those seeds (each seed's row appended, the summary "
            "written as JSON).",
            ".evaluate:show",
            _options(
                "TFA data seed of the stage (finetune.data_seed).",
                "As in train (finetune.synthetic_runs).",
                "K of the stage to evaluate (finetune.shots).",
            ),
            sweep=SweepOption(
                "--data-seeds",
                "As the paper reports: train (if needed) and evaluate the K-shot stage of each TFA data seed, e.g. "
                "0-9, then mean ± std over draws and over samplings (flow maskdiff_draws).",
                "maskdiff_draws",
                ".aggregate:parse_data_seeds",
                "check_train_inputs",
                ".aggregate:show_draws",
                clear=("finetune.data_seed",),
            ),
        ),
    ),
    deployments=(
        Deployment(
            "train_maskdiff_fold",
            "train-maskdiff",
            "Train MaskDiff's base and K-shot stages on one (dataset, fold), then (evaluate) score it into the table; "
            "synthetic_runs names maskforge runs whose novel-class samples add K-shot instances; synthetic_run, one "
            "more (the nightly chain's trigger passes the new run's URL here).",
            "train_eval_maskdiff",
            (DATASET, FOLD, ROOT, SHOTS, DATA_SEED, SYNTHETIC_RUNS, EVALUATE, SYNTHETIC_RUN),
            choose=TRAIN_OR_BOTH,
        ),
        Deployment(
            "eval_maskdiff_fold",
            "eval-maskdiff",
            "Evaluate MaskDiff's K-shot stage of one (dataset, fold, K, data seed): COCO AP into the benchmark table.",
            "eval_maskdiff",
            (DATASET, FOLD, ROOT, SHOTS, DATA_SEED),
        ),
        Deployment(
            "train_maskdiff_tfa",
            "train-maskdiff-tfa",
            "Train MaskDiff's base and K-shot stages on TFA's split (K, data seed), then (evaluate) score it on "
            "minival.",
            "train_eval_maskdiff",
            (ROOT, SHOTS, DATA_SEED, SYNTHETIC_RUNS, EVALUATE, SYNTHETIC_RUN),
            choose=TRAIN_OR_BOTH,
        ),
        Deployment(
            "eval_maskdiff_tfa",
            "eval-maskdiff-tfa",
            "Evaluate one K-shot stage on TFA's split: minival, or VOC2012 val (COCO -> VOC) when voc_root is given.",
            "eval_maskdiff",
            (ROOT, SHOTS, DATA_SEED, VOC_ROOT),
        ),
        Deployment(
            "maskdiff_tfa_draws",
            "maskdiff-tfa-draws",
            'The paper\'s table entry: K-shot stages of data seeds `data_seeds` (e.g. "0-9"), each sampled '
            "eval.sampling_seeds times, aggregated (mean ± std over draws and over samplings).",
            "maskdiff_draws",
            (
                ROOT,
                SHOTS,
                Param("data_seeds", str, "0-9", flow_arg=True, convert=".aggregate:parse_data_seeds"),
                Param("retries", int, 1, flow_arg=True),
                VOC_ROOT,
            ),
        ),
    ),
)
