"""Generation flow: plan the fold, compose and diffuse each novel class's samples, then write shards and manifest."""

from __future__ import annotations

from prefect import Flow, flow

from maskforge.flows.run_events import announce_run
from maskforge.flows.runners import check_dask_workers, dask_runner, gpu_resource, sequential_runner
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.wrappers import (
    finish_run_task,
    learn_embedding_task,
    preflight_task,
    publish_run_artifacts_task,
    start_run_task,
    transient_failure,
    write_class_part_task,
    write_generated_part_task,
    write_refined_part_task,
)


@flow(name="generate", log_prints=True, task_runner=sequential_runner())
def generate(config: MaskforgeConfig) -> dict:
    """Run one generation: returns {"url": run folder, "complete": True, "marker": completion marker}.

    A run whose folder already holds a completion marker is reported, not redone: the config hash names the
    run, and its samples are deterministic. Per-class tasks are submitted, so a Dask task runner
    (`generate.with_options(task_runner=dask_runner(...))`) fans them out; each class's part is the same either way.
    Tasks receive the typed config and the fold plan; none re-parses the config or re-plans the fold. Under Dask,
    the GPU stages (embedding, diffusion, refinement) ask for a worker's GPU resource unless configured for the CPU,
    and a cluster that could not run them is refused before any run folder exists.
    """
    plan = preflight_task(config)  # a deterministic fault stops the run here, before a run folder exists
    devices = [config.diffusion.device] if config.diffusion is not None else []
    devices += [config.refinement.device] if config.refinement is not None else []
    check_dask_workers(needs_gpu=any(device != "cpu" for device in devices))
    run = start_run_task(config)
    if run["complete"]:
        print(f"run already complete: {run['url']}")
        publish_run_artifacts_task(run["url"])  # each flow run shows the run it stands for
        return run
    url = run["url"]
    # only transient failures (lost API or store connection, CUDA out of memory) are retried
    retry = {
        "retries": config.run.retries,
        "retry_delay_seconds": config.run.retry_delay_s,
        "retry_condition_fn": transient_failure,
    }
    compose, embed, diffuse, refine = (
        t.with_options(**retry)
        for t in (write_class_part_task, learn_embedding_task, write_generated_part_task, write_refined_part_task)
    )
    synthetic = {}
    if config.diffusion is not None:
        for c in plan.novel:
            embeddings = []
            with gpu_resource(config.diffusion.device):
                if config.diffusion.embedding.samples:
                    embeddings = [embed.submit(config, plan, c.class_id, shot) for shot in c.shot_ids]
                part = diffuse.submit(config, plan, c.class_id, url, wait_for=embeddings)
            if config.refinement is not None:  # the refined, filtered part replaces the raw diffusion part
                with gpu_resource(config.refinement.device):
                    part = refine.submit(config, plan, c.class_id, url, wait_for=[part])
            synthetic[c.class_id] = part
    # composition pastes real objects, and synthetic ones cut from the class's final diffusion part
    uses_synthetic = "synthetic" in config.generation.sources
    composed = [
        compose.submit(config, plan, c.class_id, url, wait_for=[synthetic[c.class_id]] if uses_synthetic else [])
        for c in plan.novel
    ]
    parts = [future.result() for future in composed + list(synthetic.values())]
    marker = finish_run_task(config, plan, parts, url)
    publish_run_artifacts_task(url)
    announce_run(config, url, marker)  # the nightly chain's triggers start the learners on this run
    print(f"run complete: {url} ({marker['n_samples']} samples)")
    return {"url": url, "complete": True, "marker": marker}


def generate_flow(
    dask_workers: int = 0, dask_address: str | None = None, dask_cluster_class: str | None = None
) -> Flow:
    """Return the generate flow, with a Dask task runner when any Dask option is given."""
    if not dask_workers and dask_address is None and dask_cluster_class is None:
        return generate
    return generate.with_options(task_runner=dask_runner(dask_workers, dask_address, dask_cluster_class))
