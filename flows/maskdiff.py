"""MaskDiff flows: base stage then K-shot stage (detector and mask head), COCO AP evaluation into the table."""

from __future__ import annotations

from prefect import flow

from maskforge.tasks.maskdiff.aggregate import draws_caption, run_draws, seed_config
from maskforge.tasks.maskdiff.config import MaskdiffConfig
from maskforge.tasks.maskdiff.wrappers import (
    check_eval_inputs_task,
    check_train_inputs_task,
    eval_maskdiff_task,
    record_maskdiff_results_task,
    train_maskdiff_base_task,
    train_maskdiff_finetune_task,
    write_maskdiff_draws_task,
)


@flow(name="train_maskdiff", log_prints=True)
def train_maskdiff(config: MaskdiffConfig) -> dict:
    """Check both stages' inputs (pre-flight), train the base stage (reused when complete), then the K-shot stage;
    returns both reports."""
    check_train_inputs_task(config)  # a wrong input fails in seconds, not after the base stage has trained
    base = train_maskdiff_base_task(config)
    print(f"base stage: {base['stage_dir']}")
    finetune = train_maskdiff_finetune_task(config)
    print(f"K-shot stage: {finetune['stage_dir']}")
    return {"base": base, "finetune": finetune}


@flow(name="eval_maskdiff", log_prints=True)
def eval_maskdiff(config: MaskdiffConfig) -> dict:
    """Evaluate the K-shot stage (segm and bbox AP, base and novel); appends the row, publishes table and trend."""
    check_eval_inputs_task(config)  # pre-flight first, as the CLI runs it before the server starts
    result = eval_maskdiff_task(config)
    recorded = record_maskdiff_results_task(config, result)
    novel = result["segm"]["novel"]
    print(f"novel segm AP {100 * novel['ap']:.2f} ± {100 * novel['ap_std']:.2f} ({result['sampling_seeds']} samplings)")
    print(f"benchmark rows: {recorded['table_file']}")
    return {**result, "table_file": recorded["table_file"]}


@flow(name="train_eval_maskdiff", log_prints=True)
def train_eval_maskdiff(config: MaskdiffConfig) -> dict:
    """Both training stages, then evaluation: what a deployment runs."""
    train_maskdiff(config)
    return eval_maskdiff(config)


@flow(name="maskdiff_draws", log_prints=True)
def maskdiff_draws(config: MaskdiffConfig, data_seeds: list[int], retries: int = 1) -> dict:
    """The paper's reporting: for each data seed, train its K-shot stage (the base stage once, reused) and evaluate
    it with eval.sampling_seeds samplings (a row each); then mean ± std over draws and over samplings, written as
    JSON (tasks/maskdiff/aggregate.py). A failed seed is retried `retries` times, then reported, never dropped."""

    def one(seed: int) -> dict:
        return train_eval_maskdiff(seed_config(config, seed))

    report = run_draws(data_seeds, one, retries, print)
    url = write_maskdiff_draws_task(config, report)
    print(draws_caption(report, f"MaskDiff {config.split} {config.finetune.shots}-shot on {config.eval.split}"))
    print(f"draws report: {url}")
    return {**report, "draws_file": url}
