"""The generation flow: plan the fold, compose and diffuse each novel class's samples, then write shards and manifest."""

from __future__ import annotations

from prefect import flow

from flows.runners import sequential_runner
from tasks.artifacts import publish_run_artifacts_task
from tasks.config import parse_config
from tasks.fold_plan import plan_fold_task
from tasks.textual_inversion import learn_embedding_task
from tasks.write_run import (
    finish_run_task, start_run_task, write_class_part_task, write_generated_part_task, write_refined_part_task,
)


@flow(name="generate", log_prints=True, task_runner=sequential_runner())
def generate(config: dict) -> dict:
    """Run one generation: returns {"url": run folder, "complete": True, "marker": completion marker}.

    A run whose folder already holds a completion marker is reported, not redone: the config hash names the
    run, and its samples are deterministic. Per-class tasks are submitted, so a Dask task runner
    (`generate.with_options(task_runner=dask_runner(...))`) fans them out; each class's part is the same either way.
    """
    resolved = parse_config(config, source="flow parameter 'config'").resolved()
    run = start_run_task(resolved)
    if run["complete"]:
        print(f"run already complete: {run['url']}")
        publish_run_artifacts_task(run["url"])  # each flow run shows the run it stands for
        return run
    plan = plan_fold_task(resolved)
    url, novel = run["url"], plan["novel"]
    retry = {"retries": resolved["run"]["retries"], "retry_delay_seconds": resolved["run"]["retry_delay_s"]}
    compose, embed, diffuse, refine = (t.with_options(**retry) for t in (
        write_class_part_task, learn_embedding_task, write_generated_part_task, write_refined_part_task))
    synthetic = {}
    if resolved["diffusion"] is not None:
        for c in novel:
            embeddings = []
            if resolved["diffusion"]["embedding"]["samples"]:
                embeddings = [embed.submit(resolved, plan, c["class_id"], shot) for shot in c["shot_ids"]]
            part = diffuse.submit(resolved, plan, c["class_id"], url, wait_for=embeddings)
            if resolved["refinement"] is not None:  # the refined, filtered part replaces the raw diffusion part
                part = refine.submit(resolved, plan, c["class_id"], url, wait_for=[part])
            synthetic[c["class_id"]] = part
    # composition pastes real objects, and synthetic ones cut from the class's final diffusion part
    uses_synthetic = "synthetic" in resolved["generation"]["sources"]
    composed = [compose.submit(resolved, plan, c["class_id"], url,
                               wait_for=[synthetic[c["class_id"]]] if uses_synthetic else [])
                for c in novel]
    parts = [future.result() for future in composed + list(synthetic.values())]
    marker = finish_run_task(resolved, plan, parts, url)
    publish_run_artifacts_task(url)
    print(f"run complete: {url} ({marker['n_samples']} samples)")
    return {"url": url, "complete": True, "marker": marker}
