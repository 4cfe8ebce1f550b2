"""Prefect task wrappers of the HSNet stages: train, evaluate, and record the benchmark rows with their artifacts."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from maskforge.storage.results import append_results, read_results
from maskforge.tasks.episode_results import artifact_table
from maskforge.tasks.hsnet.config import HsnetConfig
from maskforge.tasks.hsnet.eval import benchmark_rows, eval_hsnet, trend_markdown
from maskforge.tasks.hsnet.train import train_hsnet


@task(name="train-hsnet", cache_policy=NO_CACHE)
def train_hsnet_task(config: HsnetConfig) -> dict:
    """Prefect task: train_hsnet (one coarse task: the whole training loop), logging to the run's log."""
    return train_hsnet(config, log=get_run_logger().info)


@task(name="eval-hsnet", cache_policy=NO_CACHE)
def eval_hsnet_task(config: HsnetConfig) -> dict:
    """Prefect task: eval_hsnet (one coarse task: all episodes), logging to the run's log."""
    return eval_hsnet(config, log=get_run_logger().info)


@task(name="record-hsnet-results", cache_policy=NO_CACHE)
def record_results_task(config: HsnetConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's rows to the benchmark table and publish them as a table artifact."""
    rows = benchmark_rows(config, result)
    url = append_results(config.eval.results_dir, rows)
    table = artifact_table(rows, result["baselines"])
    create_table_artifact(
        key=f"hsnet-eval-{result['dataset']}-f{result['fold']}",
        table=table,
        description=f"HSNet evaluation (mIoU / FB-IoU in %), {result['episodes']} episodes; rows appended to {url}",
    )
    create_markdown_artifact(
        key=f"hsnet-trend-{result['dataset']}-f{result['fold']}",
        markdown=trend_markdown(
            read_results(config.eval.results_dir), result["dataset"], result["fold"], result["shots"]
        ),
        description="This evaluation against earlier ones of the same dataset, fold and shots",
    )
    return {"table_file": url, "rows": rows}
