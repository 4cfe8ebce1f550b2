"""The event a generation emits when it completes a run: what the nightly chain's deployment triggers match.

`maskforge.run.completed`, on the resource `maskforge.run.<dataset>-f<fold>` (a dataset fold's stream of runs), with
the run's URL, round and sample count in its payload. A trigger in prefect.yaml matches the resource and the event
name and passes `{{ event.payload.url }}` to the learner deployment, which then trains or evaluates on exactly that
run (see docs/operations.md, "The nightly chain"). It is emitted only when a run was newly completed: a rerun of a
round that finds its run complete starts nothing downstream. Prefect's own `prefect.flow-run.Completed` would fire
on that no-op too, and carries no URL.
"""

from __future__ import annotations

from prefect.events import emit_event

from maskforge.tasks.config import MaskforgeConfig

#: The event name the triggers expect.
RUN_COMPLETED = "maskforge.run.completed"


def run_resource_id(dataset: str, fold: int) -> str:
    """The resource a dataset fold's runs are events of: `maskforge.run.toy-f0`."""
    return f"maskforge.run.{dataset}-f{fold}"


def announce_run(config: MaskforgeConfig, url: str, marker: dict) -> None:
    """Emit RUN_COMPLETED for the newly completed run at `url` (payload: url, round, dataset, fold, samples)."""
    dataset, fold = config.dataset.name, config.dataset.fold
    emit_event(
        event=RUN_COMPLETED,
        resource={
            "prefect.resource.id": run_resource_id(dataset, fold),
            "prefect.resource.name": url.rstrip("/").rsplit("/", 1)[-1],
        },
        payload={
            "url": url,
            "round": config.run.round,
            "dataset": dataset,
            "fold": fold,
            "samples": int(marker.get("n_samples", 0)),
        },
    )
