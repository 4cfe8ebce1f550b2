"""Prefect task wrappers of the DiffewS stages: train, evaluate, record the benchmark rows with their artifacts."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from maskforge.storage.results import append_results, read_results
from maskforge.tasks.diffews.config import DiffewsConfig
from maskforge.tasks.diffews.evaluate import benchmark_rows, eval_diffews, trend_markdown
from maskforge.tasks.diffews.train import train_diffews
from maskforge.tasks.episode_results import artifact_table
from maskforge.tasks.wrappers import gpu_slot


@task(name="train-diffews", cache_policy=NO_CACHE)
def train_diffews_task(config: DiffewsConfig) -> dict:
    """Prefect task: train_diffews (one coarse task: the whole training loop), holding the GPU slot."""
    with gpu_slot(config.run.device):
        return train_diffews(config, log=get_run_logger().info)


@task(name="eval-diffews", cache_policy=NO_CACHE)
def eval_diffews_task(config: DiffewsConfig) -> dict:
    """Prefect task: eval_diffews (one coarse task: all episodes), holding the GPU slot."""
    with gpu_slot(config.run.device):
        return eval_diffews(config, log=get_run_logger().info)


@task(name="record-diffews-results", cache_policy=NO_CACHE)
def record_diffews_results_task(config: DiffewsConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's rows to the benchmark table; publish table and trend artifacts."""
    rows = benchmark_rows(config, result)
    url = append_results(config.eval.results_dir, rows)
    create_table_artifact(
        key=f"diffews-eval-{result['dataset']}-f{result['fold']}",
        table=artifact_table(rows, result["baselines"]),
        description=f"DiffewS evaluation (mIoU / FB-IoU in %), {result['episodes']} episodes; rows appended to {url}",
    )
    create_markdown_artifact(
        key=f"diffews-trend-{result['dataset']}-f{result['fold']}",
        markdown=trend_markdown(
            read_results(config.eval.results_dir), result["dataset"], result["fold"], result["shots"]
        ),
        description="This DiffewS evaluation against earlier ones of the same dataset, fold and shots",
    )
    return {"table_file": url, "rows": rows}
