"""Prefect task wrappers of the GFSS stages: base training, novel stage, evaluation, benchmark rows and artifacts."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from maskforge.tasks.gfss.base import train_gfss_base
from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.gfss.evaluate import benchmark_rows, eval_gfss, summary_table, trend_markdown
from maskforge.tasks.gfss.novel import train_gfss_novel
from maskforge.tasks.gfss.preflight import (
    check_base_inputs,
    check_eval_inputs,
    check_novel_eval_inputs,
    check_novel_inputs,
)
from maskforge.tasks.wrappers import record_learner_results, run_learner_stage


@task(name="check-gfss-base-inputs", cache_policy=NO_CACHE)
def check_base_inputs_task(config: GfssConfig) -> None:
    """Prefect task: train_gfss_base's pre-flight (tasks/gfss/preflight.py), the flow's first task; no GPU slot."""
    check_base_inputs(config)


@task(name="check-gfss-novel-inputs", cache_policy=NO_CACHE)
def check_novel_inputs_task(config: GfssConfig) -> None:
    """Prefect task: train_gfss_novel's pre-flight (tasks/gfss/preflight.py), the flow's first task; no GPU slot."""
    check_novel_inputs(config)


@task(name="check-gfss-eval-inputs", cache_policy=NO_CACHE)
def check_eval_inputs_task(config: GfssConfig) -> None:
    """Prefect task: eval_gfss's pre-flight (tasks/gfss/preflight.py), the flow's first task; no GPU slot."""
    check_eval_inputs(config)


@task(name="check-gfss-novel-eval-inputs", cache_policy=NO_CACHE)
def check_novel_eval_inputs_task(config: GfssConfig) -> None:
    """Prefect task: gfss_novel_eval's pre-flight (both stages' inputs), the flow's first task; no GPU slot."""
    check_novel_eval_inputs(config)


@task(name="train-gfss-base", cache_policy=NO_CACHE)
def train_gfss_base_task(config: GfssConfig) -> dict:
    """Prefect task: train_gfss_base (one coarse task: the whole training loop), holding the GPU slot."""
    return run_learner_stage(train_gfss_base, config)


@task(name="train-gfss-novel", cache_policy=NO_CACHE)
def train_gfss_novel_task(config: GfssConfig) -> dict:
    """Prefect task: train_gfss_novel (every run seed and step), holding the GPU slot."""
    return run_learner_stage(train_gfss_novel, config)


@task(name="eval-gfss", cache_policy=NO_CACHE)
def eval_gfss_task(config: GfssConfig) -> dict:
    """Prefect task: eval_gfss (every run and step checkpoint on the val split), holding the GPU slot."""
    return run_learner_stage(eval_gfss, config)


@task(name="record-gfss-results", cache_policy=NO_CACHE)
def record_gfss_results_task(config: GfssConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's row to the benchmark table; publish table and trend artifacts."""
    key = f"gfss-{result['dataset']}-f{result['fold']}-{result['shots']}shot"
    return record_learner_results(
        config.eval.results_dir,
        benchmark_rows(config, result),
        result,
        config,
        learner="GFSS",
        table_key=f"{key}-{result['setting'].replace('+', '-')}",
        table=summary_table(result),
        about=f"GFSS {result['setting']} (%, mean ± std over {len(result['runs'])} run seeds)",
        trend_key=f"{key}-trend",
        trend=trend_markdown,
    )
