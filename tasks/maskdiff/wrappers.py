"""Prefect task wrappers of the MaskDiff stages: base and K-shot training, COCO AP evaluation, benchmark rows."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from maskforge.storage.results import append_results, read_results
from maskforge.tasks.maskdiff.config import MaskdiffConfig
from maskforge.tasks.maskdiff.evaluate import benchmark_rows, eval_maskdiff, summary_table, trend_markdown
from maskforge.tasks.maskdiff.train import train_maskdiff_base, train_maskdiff_finetune
from maskforge.tasks.wrappers import gpu_slot


@task(name="train-maskdiff-base", cache_policy=NO_CACHE)
def train_maskdiff_base_task(config: MaskdiffConfig) -> dict:
    """Prefect task: the base stage (detector on base classes, then the mask head), holding the GPU slot."""
    with gpu_slot(config.run.device):
        return train_maskdiff_base(config, log=get_run_logger().info)


@task(name="train-maskdiff-finetune", cache_policy=NO_CACHE)
def train_maskdiff_finetune_task(config: MaskdiffConfig) -> dict:
    """Prefect task: the K-shot stage (surgery, last-layer fine-tuning, mask head), holding the GPU slot."""
    with gpu_slot(config.run.device):
        return train_maskdiff_finetune(config, log=get_run_logger().info)


@task(name="eval-maskdiff", cache_policy=NO_CACHE)
def eval_maskdiff_task(config: MaskdiffConfig) -> dict:
    """Prefect task: COCO AP of the K-shot stage over every sampling seed, holding the GPU slot."""
    with gpu_slot(config.run.device):
        return eval_maskdiff(config, log=get_run_logger().info)


@task(name="record-maskdiff-results", cache_policy=NO_CACHE)
def record_maskdiff_results_task(config: MaskdiffConfig, result: dict) -> dict:
    """Prefect task: append the evaluation's row to the benchmark table; publish table and trend artifacts."""
    rows = benchmark_rows(config, result)
    url = append_results(config.eval.results_dir, rows)
    key = f"maskdiff-{result['dataset']}-f{result['fold']}-{result['shots']}shot"
    create_table_artifact(
        key=f"{key}-s{result['data_seed']}",
        table=summary_table(result),
        description=f"MaskDiff COCO AP (%, segm mean ± std over {result['sampling_seeds']} samplings); row in {url}",
    )
    create_markdown_artifact(
        key=f"{key}-trend",
        markdown=trend_markdown(
            read_results(config.eval.results_dir), result["dataset"], result["fold"], result["shots"]
        ),
        description="This MaskDiff evaluation against earlier ones of the same dataset, fold and shots",
    )
    return {"table_file": url, "rows": rows}
