"""Prefect task wrappers of the MaskDiff stages: base and K-shot training, COCO AP evaluation, benchmark rows."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from maskforge.tasks.maskdiff.aggregate import write_draws
from maskforge.tasks.maskdiff.config import MaskdiffConfig
from maskforge.tasks.maskdiff.evaluate import benchmark_rows, eval_maskdiff, summary_table, trend_markdown
from maskforge.tasks.maskdiff.preflight import check_eval_inputs, check_train_inputs
from maskforge.tasks.maskdiff.train import train_maskdiff_base, train_maskdiff_finetune
from maskforge.tasks.wrappers import record_learner_results, run_learner_stage


@task(name="check-maskdiff-train-inputs", cache_policy=NO_CACHE)
def check_train_inputs_task(config: MaskdiffConfig) -> None:
    """Prefect task: train_maskdiff's pre-flight (tasks/maskdiff/preflight.py: both stages' inputs, the synthetic
    runs included), the flow's first task: a wrong input fails before the base stage trains; no GPU slot."""
    check_train_inputs(config)


@task(name="check-maskdiff-eval-inputs", cache_policy=NO_CACHE)
def check_eval_inputs_task(config: MaskdiffConfig) -> None:
    """Prefect task: eval_maskdiff's pre-flight (tasks/maskdiff/preflight.py), the flow's first task; no GPU slot."""
    check_eval_inputs(config)


@task(name="train-maskdiff-base", cache_policy=NO_CACHE)
def train_maskdiff_base_task(config: MaskdiffConfig) -> dict:
    """Prefect task: the base stage (detector on base classes, then the mask head), holding the GPU slot."""
    return run_learner_stage(train_maskdiff_base, config)


@task(name="train-maskdiff-finetune", cache_policy=NO_CACHE)
def train_maskdiff_finetune_task(config: MaskdiffConfig) -> dict:
    """Prefect task: the K-shot stage (surgery, last-layer fine-tuning, mask head), holding the GPU slot."""
    return run_learner_stage(train_maskdiff_finetune, config)


@task(name="eval-maskdiff", cache_policy=NO_CACHE)
def eval_maskdiff_task(config: MaskdiffConfig) -> dict:
    """Prefect task: COCO AP of the K-shot stage over every sampling seed, holding the GPU slot."""
    return run_learner_stage(eval_maskdiff, config)


@task(name="record-maskdiff-results", cache_policy=NO_CACHE)
def record_maskdiff_results_task(config: MaskdiffConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's row to the benchmark table; publish table and trend artifacts."""
    key = f"maskdiff-{result['dataset']}-f{result['fold']}-{result['shots']}shot"
    return record_learner_results(
        config.eval.results_dir,
        benchmark_rows(config, result),
        result,
        config,
        learner="MaskDiff",
        table_key=f"{key}-s{result['data_seed']}",
        table=summary_table(result),
        about=f"MaskDiff COCO AP (%, segm mean ± std over {result['sampling_seeds']} samplings)",
        trend_key=f"{key}-trend",
        trend=trend_markdown,
    )


@task(name="write-maskdiff-draws", cache_policy=NO_CACHE)
def write_maskdiff_draws_task(config: MaskdiffConfig, report: dict) -> str:
    """Prefect task: write the draws report (mean ± std over data seeds and samplings, failed seeds) as JSON."""
    return write_draws(config, report)
