"""Task runners for the generate flow: one task at a time in-process, or fan-out over Dask (local or remote)."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner


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
    if cluster_class:  # e.g. LocalCUDACluster: one worker per visible GPU unless workers says otherwise
        return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs={"n_workers": workers} if workers else {})
    if workers < 1:
        raise ValueError(f"--dask-workers must be >= 1 for a local Dask cluster, got {workers}")
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
