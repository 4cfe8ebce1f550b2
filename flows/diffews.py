"""DiffewS flows: episodic training from SD on a fold's base classes, episodic evaluation into the benchmark table."""

from __future__ import annotations

from prefect import flow

from maskforge.tasks.diffews.config import DiffewsConfig
from maskforge.tasks.diffews.wrappers import (
    check_eval_inputs_task,
    check_train_inputs_task,
    eval_diffews_task,
    record_diffews_results_task,
    train_diffews_task,
)


@flow(name="train_diffews", log_prints=True)
def train_diffews(config: DiffewsConfig) -> dict:
    """Train DiffewS on a DiffewS config; returns the training report (checkpoint folder, losses, seconds)."""
    check_train_inputs_task(config)  # pre-flight first: a deployment's wrong input fails in seconds, on one line
    report = train_diffews_task(config)
    print(f"checkpoint: {report['checkpoint']}")
    return report


@flow(name="eval_diffews", log_prints=True)
def eval_diffews(config: DiffewsConfig) -> dict:
    """Evaluate a DiffewS checkpoint; appends one benchmark row per setting, publishes table and trend artifacts."""
    check_eval_inputs_task(config)  # pre-flight first, as the CLI runs it before the server starts
    result = eval_diffews_task(config)
    recorded = record_diffews_results_task(config, result)
    for name, summary in result["settings"].items():
        print(f"{name}: mIoU {100 * summary['miou']:.2f}  FB-IoU {100 * summary['fb_iou']:.2f}")
    print(f"benchmark rows: {recorded['table_file']}")
    return {**result, "table_file": recorded["table_file"]}


@flow(name="train_eval_diffews", log_prints=True)
def train_eval_diffews(config: DiffewsConfig) -> dict:
    """Train (or reuse the trained checkpoint), then evaluate: what a nightly deployment runs."""
    train_diffews(config)
    return eval_diffews(config)
