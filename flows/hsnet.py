"""The HSNet flows: episodic training on a fold's base classes, and episodic evaluation written to the benchmark table."""

from __future__ import annotations

from prefect import flow

from tasks.hsnet_config import parse_hsnet_config
from tasks.hsnet_eval import eval_hsnet_task, record_results_task
from tasks.hsnet_train import train_hsnet_task


@flow(name="train_hsnet", log_prints=True)
def train_hsnet(config: dict) -> dict:
    """Train HSNet on a resolved HSNet config; returns the training report (checkpoint path, losses, seconds)."""
    resolved = parse_hsnet_config(config, source="flow parameter 'config'").resolved()
    report = train_hsnet_task(resolved)
    print(f"checkpoint: {report['checkpoint']}")
    return report


@flow(name="eval_hsnet", log_prints=True)
def eval_hsnet(config: dict) -> dict:
    """Evaluate an HSNet checkpoint; appends one benchmark row per setting and publishes a table artifact."""
    resolved = parse_hsnet_config(config, source="flow parameter 'config'").resolved()
    result = eval_hsnet_task(resolved)
    recorded = record_results_task(resolved, result)
    for name, summary in result["settings"].items():
        print(f"{name}: mIoU {100 * summary['miou']:.2f}  FB-IoU {100 * summary['fb_iou']:.2f}")
    print(f"benchmark rows: {recorded['table_file']}")
    return {**result, "table_file": recorded["table_file"]}
