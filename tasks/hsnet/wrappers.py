"""Prefect task wrappers of the HSNet stages: train, evaluate, and record the benchmark rows with their artifacts."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from maskforge.tasks.episode_results import artifact_table
from maskforge.tasks.hsnet.config import HsnetConfig
from maskforge.tasks.hsnet.eval import benchmark_rows, eval_hsnet, trend_markdown
from maskforge.tasks.hsnet.preflight import check_eval_inputs, check_train_inputs
from maskforge.tasks.hsnet.train import train_hsnet
from maskforge.tasks.wrappers import record_learner_results, run_learner_stage


@task(name="check-hsnet-train-inputs", cache_policy=NO_CACHE)
def check_train_inputs_task(config: HsnetConfig) -> None:
    """Prefect task: train_hsnet's pre-flight (tasks/hsnet/preflight.py), the flow's first task; no GPU slot."""
    check_train_inputs(config)


@task(name="check-hsnet-eval-inputs", cache_policy=NO_CACHE)
def check_eval_inputs_task(config: HsnetConfig) -> None:
    """Prefect task: eval_hsnet's pre-flight (tasks/hsnet/preflight.py), the flow's first task; no GPU slot."""
    check_eval_inputs(config)


@task(name="train-hsnet", cache_policy=NO_CACHE)
def train_hsnet_task(config: HsnetConfig) -> dict:
    """Prefect task: train_hsnet (one coarse task: the whole training loop), holding the GPU slot."""
    return run_learner_stage(train_hsnet, config)


@task(name="eval-hsnet", cache_policy=NO_CACHE)
def eval_hsnet_task(config: HsnetConfig) -> dict:
    """Prefect task: eval_hsnet (one coarse task: all episodes), holding the GPU slot."""
    return run_learner_stage(eval_hsnet, config)


@task(name="record-hsnet-results", cache_policy=NO_CACHE)
def record_hsnet_results_task(config: HsnetConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's rows to the benchmark table; publish table and trend artifacts."""
    rows = benchmark_rows(config, result)
    return record_learner_results(
        config.eval.results_dir,
        rows,
        result,
        config,
        learner="HSNet",
        table_key=f"hsnet-eval-{result['dataset']}-f{result['fold']}",
        table=artifact_table(rows, result["baselines"]),
        about=f"HSNet evaluation (mIoU / FB-IoU in %), {result['episodes']} episodes",
        trend_key=f"hsnet-trend-{result['dataset']}-f{result['fold']}",
        trend=trend_markdown,
    )
