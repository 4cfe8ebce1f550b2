"""The retention stage: remove the oldest complete runs of a runs folder beyond a policy that no latest benchmark
evaluation uses (storage/retention.py holds the plan and the removal), and say what it did, for the scheduled
`runs-gc` deployment (flows/retention.py) as for `maskforge runs gc`."""

from __future__ import annotations

from collections.abc import Callable

from maskforge.storage.retention import RetentionPolicy, plan_gc, run_gc


def collect_runs(
    runs_dir: str,
    policy: RetentionPolicy,
    results_dirs: list[str],
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Plan the retention of RUNS_DIR and, unless dry_run, carry it out (each removal logged). Returns {"runs_dir",
    "removed" (URLs; those that would go on a dry run), "in_use" (kept: a latest evaluation uses them), "kept" (by
    the policy: keep_last, keep_days, or within the disk budget), "dry_run", "bytes" (with a budget: {"kept",
    "budget"}, else None)}."""
    plan = plan_gc(runs_dir, policy, results_dirs)
    for row in plan["in_use"]:
        log(f"kept (a latest evaluation uses it): {row['url']}")
    budget = plan.get("bytes")
    if budget is not None and budget["kept"] > budget["budget"]:
        log(
            f"over budget: the runs kept take {budget['kept']} bytes, more than max_bytes {budget['budget']} "
            "(the newest keep_last per dataset fold, young and in-use runs are never removed for the budget)"
        )
    if dry_run:
        removed = [row["url"] for row in [*plan["half_removed"], *plan["remove"]]]
        for url in removed:
            log(f"would remove {url}")
    else:
        removed = run_gc(runs_dir, plan, log)
    return {
        "runs_dir": runs_dir,
        "removed": removed,
        "in_use": [row["url"] for row in plan["in_use"]],
        "kept": [row["url"] for row in [*plan["kept"], *plan.get("within_budget", [])]],
        "dry_run": dry_run,
        "bytes": budget,
    }


def retention_markdown(report: dict) -> str:
    """The artifact of a retention run: what went (or would go), what stayed and why."""
    verb = "would remove" if report["dry_run"] else "removed"
    lines = [
        f"# Retention of {report['runs_dir']}",
        "",
        f"{verb} {len(report['removed'])} run(s); kept {len(report['kept'])} by the policy and "
        f"{len(report['in_use'])} that a latest evaluation uses.",
        "",
    ]
    if report.get("bytes"):
        b = report["bytes"]
        lines += [f"Disk budget: the runs kept take {b['kept']} of {b['budget']} bytes.", ""]
    for title, urls in ((verb, report["removed"]), ("in use", report["in_use"])):
        lines += [f"- {title}: `{url}`" for url in urls]
    return "\n".join(lines) + "\n"
