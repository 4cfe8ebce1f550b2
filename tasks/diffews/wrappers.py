"""Prefect task wrappers of the DiffewS stages: train, evaluate, record the benchmark rows with their artifacts."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from maskforge.tasks.diffews.config import DiffewsConfig
from maskforge.tasks.diffews.evaluate import benchmark_rows, eval_diffews, trend_markdown
from maskforge.tasks.diffews.preflight import check_eval_inputs, check_train_inputs
from maskforge.tasks.diffews.train import train_diffews
from maskforge.tasks.episode_results import artifact_table
from maskforge.tasks.wrappers import record_learner_results, run_learner_stage


@task(name="check-diffews-train-inputs", cache_policy=NO_CACHE)
def check_train_inputs_task(config: DiffewsConfig) -> None:
    """Prefect task: train_diffews's pre-flight (tasks/diffews/preflight.py), the flow's first task; no GPU slot."""
    check_train_inputs(config)


@task(name="check-diffews-eval-inputs", cache_policy=NO_CACHE)
def check_eval_inputs_task(config: DiffewsConfig) -> None:
    """Prefect task: eval_diffews's pre-flight (tasks/diffews/preflight.py), the flow's first task; no GPU slot."""
    check_eval_inputs(config)


@task(name="train-diffews", cache_policy=NO_CACHE)
def train_diffews_task(config: DiffewsConfig) -> dict:
    """Prefect task: train_diffews (one coarse task: the whole training loop), holding the GPU slot."""
    return run_learner_stage(train_diffews, config)


@task(name="eval-diffews", cache_policy=NO_CACHE)
def eval_diffews_task(config: DiffewsConfig) -> dict:
    """Prefect task: eval_diffews (one coarse task: all episodes), holding the GPU slot."""
    return run_learner_stage(eval_diffews, config)


@task(name="record-diffews-results", cache_policy=NO_CACHE)
def record_diffews_results_task(config: DiffewsConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's rows to the benchmark table; publish table and trend artifacts."""
    rows = benchmark_rows(config, result)
    return record_learner_results(
        config.eval.results_dir,
        rows,
        result,
        config,
        learner="DiffewS",
        table_key=f"diffews-eval-{result['dataset']}-f{result['fold']}",
        table=artifact_table(rows, result["baselines"]),
        about=f"DiffewS evaluation (mIoU / FB-IoU in %), {result['episodes']} episodes",
        trend_key=f"diffews-trend-{result['dataset']}-f{result['fold']}",
        trend=trend_markdown,
    )
