"""The generation flow: plan the fold, compose and diffuse each novel class's samples, then write shards and manifest."""

from __future__ import annotations

from prefect import flow

from tasks.artifacts import publish_run_artifacts_task
from tasks.config import parse_config
from tasks.fold_plan import plan_fold_task
from tasks.textual_inversion import learn_embedding_task
from tasks.write_run import (
    finish_run_task, start_run_task, write_class_part_task, write_generated_part_task, write_refined_part_task,
)


@flow(name="generate", log_prints=True)
def generate(config: dict) -> dict:
    """Run one generation: returns {"url": run folder, "complete": True, "marker": completion marker}.

    A run whose folder already holds a completion marker is reported, not redone: the config hash names the
    run, and its samples are deterministic.
    """
    resolved = parse_config(config, source="flow parameter 'config'").resolved()
    run = start_run_task(resolved)
    if run["complete"]:
        print(f"run already complete: {run['url']}")
        return run
    plan = plan_fold_task(resolved)
    parts = [write_class_part_task(resolved, plan, c["class_id"], run["url"]) for c in plan["novel"]]
    if resolved["diffusion"] is not None:
        if resolved["diffusion"]["embedding"]["samples"]:
            for c in plan["novel"]:
                for shot in c["shot_ids"]:
                    learn_embedding_task(resolved, plan, c["class_id"], shot)
        generated = [write_generated_part_task(resolved, plan, c["class_id"], run["url"]) for c in plan["novel"]]
        if resolved["refinement"] is not None:  # refined, filtered parts replace the raw diffusion parts
            generated = [write_refined_part_task(resolved, plan, c["class_id"], run["url"]) for c in plan["novel"]]
        parts += generated
    marker = finish_run_task(resolved, plan, parts, run["url"])
    publish_run_artifacts_task(run["url"])
    print(f"run complete: {run['url']} ({marker['n_samples']} samples)")
    return {"url": run["url"], "complete": True, "marker": marker}
