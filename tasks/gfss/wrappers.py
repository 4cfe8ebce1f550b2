"""Prefect task wrappers of the GFSS stages: base training, novel stage, evaluation, benchmark rows and artifacts."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from maskforge.storage.results import append_results, read_results
from maskforge.tasks.gfss.base import train_gfss_base
from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.gfss.evaluate import benchmark_rows, eval_gfss, summary_table, trend_markdown
from maskforge.tasks.gfss.novel import train_gfss_novel
from maskforge.tasks.wrappers import gpu_slot


@task(name="train-gfss-base", cache_policy=NO_CACHE)
def train_gfss_base_task(config: GfssConfig) -> dict:
    """Prefect task: train_gfss_base (one coarse task: the whole training loop), holding the GPU slot."""
    with gpu_slot(config.run.device):
        return train_gfss_base(config, log=get_run_logger().info)


@task(name="train-gfss-novel", cache_policy=NO_CACHE)
def train_gfss_novel_task(config: GfssConfig) -> dict:
    """Prefect task: train_gfss_novel (every run seed and step), holding the GPU slot."""
    with gpu_slot(config.run.device):
        return train_gfss_novel(config, log=get_run_logger().info)


@task(name="eval-gfss", cache_policy=NO_CACHE)
def eval_gfss_task(config: GfssConfig) -> dict:
    """Prefect task: eval_gfss (every run and step checkpoint on the val split), holding the GPU slot."""
    with gpu_slot(config.run.device):
        return eval_gfss(config, log=get_run_logger().info)


@task(name="record-gfss-results", cache_policy=NO_CACHE)
def record_gfss_results_task(config: GfssConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's row to the benchmark table; publish table and trend artifacts."""
    rows = benchmark_rows(config, result)
    url = append_results(config.eval.results_dir, rows)
    key = f"gfss-{result['dataset']}-f{result['fold']}-{result['shots']}shot"
    create_table_artifact(
        key=f"{key}-{result['setting'].replace('+', '-')}",
        table=summary_table(result),
        description=f"GFSS {result['setting']} (%, mean ± std over {len(result['runs'])} run seeds); row in {url}",
    )
    create_markdown_artifact(
        key=f"{key}-trend",
        markdown=trend_markdown(
            read_results(config.eval.results_dir), result["dataset"], result["fold"], result["shots"]
        ),
        description="This GFSS evaluation against earlier ones of the same dataset, fold and shots",
    )
    return {"table_file": url, "rows": rows}
