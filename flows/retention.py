"""The scheduled retention of a runs folder: nightly rounds make a run folder every night, and this flow (deployment
`runs-gc`, prefect.yaml) removes the oldest complete ones beyond its policy that no latest benchmark evaluation uses,
then publishes what it did as an artifact. `maskforge runs gc` does the same from the command line."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from maskforge.storage.retention import RetentionPolicy, parse_size
from maskforge.tasks.retention import retention_markdown
from maskforge.tasks.wrappers import collect_runs_task


@flow(name="gc-runs", log_prints=True)
def gc_runs(
    runs_dir: str = "runs",
    keep_last: int = 7,
    keep_days: float | None = None,
    max_bytes: int | str | None = None,
    results: list[str] | None = None,
    dry_run: bool = False,
) -> dict:
    """Keep, per dataset and fold of RUNS_DIR's catalogue, the keep_last newest runs, (keep_days) every run younger
    than that and (max_bytes: bytes, or e.g. "50G") older ones while all runs fit the budget; remove the others
    unless the latest evaluation of some setting in `results` (default ["results"]) uses them; incomplete runs are
    never touched. dry_run: only report what would go. A policy out of range fails before anything is read."""
    budget = parse_size(str(max_bytes)) if max_bytes is not None else None
    policy = RetentionPolicy(keep_last, keep_days, budget)
    report = collect_runs_task(runs_dir, policy, list(results or ["results"]), dry_run)
    create_markdown_artifact(key="runs-gc", markdown=retention_markdown(report), description=f"Retention of {runs_dir}")
    print(f"{'would remove' if dry_run else 'removed'} {len(report['removed'])} run(s) of {runs_dir}")
    return report
