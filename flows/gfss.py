"""GFSS flows: base stage, incremental novel stage (the shard consumer), PIFS evaluation, and novel + eval."""

from __future__ import annotations

from prefect import flow

from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.gfss.wrappers import (
    check_base_inputs_task,
    check_eval_inputs_task,
    check_novel_eval_inputs_task,
    check_novel_inputs_task,
    eval_gfss_task,
    record_gfss_results_task,
    train_gfss_base_task,
    train_gfss_novel_task,
)


@flow(name="train_gfss_base", log_prints=True)
def train_gfss_base(config: GfssConfig) -> dict:
    """Train the GFSS base model on the fold's leakage-free base set; returns the training report."""
    check_base_inputs_task(config)  # pre-flight first: a deployment's wrong input fails in seconds, on one line
    report = train_gfss_base_task(config)
    print(f"base checkpoint: {report['checkpoint']}")
    return report


@flow(name="train_gfss_novel", log_prints=True)
def train_gfss_novel(config: GfssConfig) -> dict:
    """Run the incremental stage (gaps, finetune or shot-only; novel.synthetic_runs when set) for every run seed."""
    check_novel_inputs_task(config)  # pre-flight first, as the CLI runs it before the server starts
    report = train_gfss_novel_task(config)
    print(f"novel stage: {report['novel_dir']} ({len(report['runs'])} runs x {len(report['task_stream'])} steps)")
    return report


@flow(name="eval_gfss", log_prints=True)
def eval_gfss(config: GfssConfig) -> dict:
    """Evaluate the novel stage's checkpoints (PIFS); appends the benchmark row, publishes table and trend."""
    check_eval_inputs_task(config)  # pre-flight first, as the CLI runs it before the server starts
    result = eval_gfss_task(config)
    recorded = record_gfss_results_task(config, result)
    s = result["summary"]
    print(
        f"{result['setting']}: base {100 * s['base_miou']:.2f}  novel {100 * s['novel_miou']:.2f}  "
        f"HM {100 * s['hm']:.2f} (PIFS average, {len(result['runs'])} runs)"
    )
    print(f"benchmark rows: {recorded['table_file']}")
    return {**result, "table_file": recorded["table_file"]}


@flow(name="gfss_novel_eval", log_prints=True)
def gfss_novel_eval(config: GfssConfig) -> dict:
    """Novel stage then evaluation: what a deployment runs after a nightly regeneration."""
    check_novel_eval_inputs_task(config)  # both stages' inputs before the first trains
    train_gfss_novel(config)
    return eval_gfss(config)
