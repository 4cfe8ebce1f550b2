"""Task runners for the generate flow: one task at a time in-process, or fan-out over Dask (local or remote)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

#: The Dask worker resource a GPU stage asks for (workers offer it with `dask worker ADDRESS --resources GPU=N`).
GPU_RESOURCE = "GPU"


class AbandoningTaskRunner(ThreadPoolTaskRunner):
    """ThreadPoolTaskRunner that does not wait for a running task when the flow ends with an exception.

    Prefect's runner shuts its executor down with wait=True, so Ctrl-C or SIGTERM during a long task (an embedding,
    a class's diffusion) left the command waiting minutes for that task to finish. Every generation task writes
    its part atomically and a rerun resumes from the finished parts, so the running one can be abandoned: its
    thread is left to the process exit (the CLI ends the process at once on a signal, flows/cli_run.py)."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        """On success as Prefect's runner; on an exception, cancel queued tasks and return without waiting."""
        if exc_type is None or self._executor is None:
            return super().__exit__(exc_type, exc_value, traceback)
        for event in self._cancel_events.values():
            event.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        return super().__exit__(exc_type, exc_value, traceback)


def sequential_runner() -> ThreadPoolTaskRunner:
    """Return the default runner: one worker thread, so tasks run in submission order and share one set of models
    (the cross-attention capture installs processors on the shared UNet: two threads at once would mix them); on
    Ctrl-C or SIGTERM it does not wait for the running task (AbandoningTaskRunner)."""
    return AbandoningTaskRunner(max_workers=1)


def dask_runner(workers: int = 0, address: str | None = None, cluster_class: str | None = None):
    """Return a DaskTaskRunner: an existing scheduler at `address`, or a local cluster of `workers` processes with
    one thread each (each loads its own models); `cluster_class` picks e.g. dask_cuda.LocalCUDACluster (one worker
    per GPU, pinned with CUDA_VISIBLE_DEVICES)."""
    from prefect_dask import DaskTaskRunner

    for option, value in (("--dask-address", address), ("--dask-cluster-class", cluster_class)):
        if value is not None and not value.strip():
            raise ValueError(f"{option}: empty; expected e.g. tcp://host:8786 or dask_cuda.LocalCUDACluster")
    if address is not None:
        if workers or cluster_class:
            raise ValueError(
                f"--dask-address {address!r} connects to a running scheduler; --dask-workers ({workers}) and "
                f"--dask-cluster-class ({cluster_class}) start a cluster: give one or the other"
            )
        return DaskTaskRunner(address=address)
    # the clusters started here give each worker one GPU slot (GPU stages ask for one, see gpu_resource): one
    # diffusion part per worker at a time, as before resources existed
    gpu = {"resources": {GPU_RESOURCE: 1}}
    if cluster_class:  # e.g. LocalCUDACluster: one worker per visible GPU unless workers says otherwise
        return DaskTaskRunner(
            cluster_class=cluster_class, cluster_kwargs={**gpu, **({"n_workers": workers} if workers else {})}
        )
    if workers < 1:
        raise ValueError(f"--dask-workers must be >= 1 for a local Dask cluster, got {workers}")
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, **gpu})


def _dask_client():
    """Return the distributed Client of the running flow's DaskTaskRunner, or None under any other task runner."""
    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if runner is None or not type(runner).__module__.startswith("prefect_dask"):
        return None
    return runner.client  # started on first use, for this flow run


def gpu_resource(device: str) -> AbstractContextManager:
    """Context for submitting a GPU stage: under a Dask task runner, tasks submitted inside it ask for one GPU
    resource, so a worker runs as many GPU parts at once as it offers (one GPU never runs two diffusion parts);
    a stage configured for the CPU (`device` "cpu") asks for none, nor does anything under other runners."""
    if device == "cpu" or _dask_client() is None:
        return nullcontext()
    import dask

    return dask.annotate(resources={GPU_RESOURCE: 1})


def check_dask_workers(needs_gpu: bool) -> None:
    """Under a Dask task runner, refuse before any work a cluster that could never run the flow: no worker at all,
    or (`needs_gpu`) none offering a GPU resource, where GPU tasks would wait forever. Other runners: nothing."""
    client = _dask_client()
    if client is None:
        return
    address = client.scheduler.address
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise ValueError(f"--dask-address {address}: no worker is connected; start one with `dask worker {address}`")
    if needs_gpu and not any(w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1 for w in workers.values()):
        raise ValueError(
            f"--dask-address {address}: none of its {len(workers)} worker(s) offers a {GPU_RESOURCE} resource, which "
            f"the diffusion and refinement stages ask for; start workers with `dask worker {address} --resources "
            f"{GPU_RESOURCE}=1` (or set the stages' device to cpu)"
        )
