"""HSNet flows: episodic training on a fold's base classes, episodic evaluation written to the benchmark table."""

from __future__ import annotations

from prefect import flow

from maskforge.tasks.hsnet.config import HsnetConfig
from maskforge.tasks.hsnet.wrappers import (
    check_eval_inputs_task,
    check_train_inputs_task,
    eval_hsnet_task,
    record_hsnet_results_task,
    train_hsnet_task,
)


@flow(name="train_hsnet", log_prints=True)
def train_hsnet(config: HsnetConfig) -> dict:
    """Train HSNet on an HSNet config; returns the training report (checkpoint path, losses, seconds)."""
    check_train_inputs_task(config)  # pre-flight first: a deployment's wrong input fails in seconds, on one line
    report = train_hsnet_task(config)
    print(f"checkpoint: {report['checkpoint']}")
    return report


@flow(name="eval_hsnet", log_prints=True)
def eval_hsnet(config: HsnetConfig) -> dict:
    """Evaluate an HSNet checkpoint; appends one benchmark row per setting and publishes a table artifact."""
    check_eval_inputs_task(config)  # pre-flight first, as the CLI runs it before the server starts
    result = eval_hsnet_task(config)
    recorded = record_hsnet_results_task(config, result)
    for name, summary in result["settings"].items():
        print(f"{name}: mIoU {100 * summary['miou']:.2f}  FB-IoU {100 * summary['fb_iou']:.2f}")
    print(f"benchmark rows: {recorded['table_file']}")
    return {**result, "table_file": recorded["table_file"]}
