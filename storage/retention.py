"""Retention of generation runs: which complete runs a policy removes, and their removal.

Nightly rounds accumulate runs. A policy keeps, per dataset and fold, the `keep_last` newest complete runs and every
run younger than `keep_days`; of the others it removes only those that no benchmark row's *latest* evaluation
refers to (per model, dataset, fold, shots, setting, protocol and split: its synthetic runs and every run its stored
config names). With a disk budget (`max_bytes`) the others go oldest first only while the catalogued runs together
take more than the budget: the budget decides how much history beyond keep_last stays (keep_last 1 and a budget is
a pure disk policy), and a folder whose protected runs alone exceed it is reported as over budget. Runs without a
completion marker are never touched (one may be under way); catalogued runs are the only candidates.

Removal is ordered so that a kill at any point leaves nothing a reader takes for a run: a tombstone file first (the
next gc finishes the job), then the catalogue row (no selector picks the run any more), the completion marker (no
reader opens it), and the folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from maskforge.storage.catalogue import CATALOGUE_DIR, read_catalogue
from maskforge.storage.fs import atomic_write_bytes, exists, join, location_key, read_bytes, remove_tree, resolve
from maskforge.storage.results import CONFIG_DIR, read_results, rows_as_dicts
from maskforge.storage.shards import MARKER_NAME

#: The largest disk budget a policy takes (1 PiB).
MAX_BUDGET = 2**50
#: Binary size suffixes a budget may be written with (50G = 50 GiB).
SIZE_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
#: The file a removal writes into a run folder first: a folder holding it is half removed, and gc finishes it.
TOMBSTONE = ".removing"
#: The columns that make two benchmark rows the same evaluation at two times (the newer one is "latest").
EVALUATION_KEY = ("model", "dataset", "fold", "shots", "setting", "protocol", "split")


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep the keep_last newest runs per dataset and fold, (keep_days) every run younger than that, and (max_bytes)
    older runs too while all catalogued runs fit that many bytes."""

    keep_last: int
    keep_days: float | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        """Refuse a policy that would keep nothing or is out of range."""
        if not 1 <= self.keep_last <= 100_000:
            raise ValueError(f"keep_last: expected 1 to 100000 runs per dataset and fold, got {self.keep_last}")
        if self.keep_days is not None and not 0 <= self.keep_days <= 36_500:
            raise ValueError(f"keep_days: expected 0 to 36500 days, got {self.keep_days}")
        if self.max_bytes is not None and not 1 <= self.max_bytes <= MAX_BUDGET:
            raise ValueError(f"max_bytes: expected 1 to {MAX_BUDGET} bytes (1 PiB), got {self.max_bytes}")


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON value (a stored config names runs in fields of any learner)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def runs_in_use(results_dirs: Iterable[str]) -> set[str]:
    """Return the location keys of every run the latest evaluation of each benchmark setting refers to."""
    used: set[str] = set()
    for table_dir in results_dirs:
        latest: dict[tuple, dict] = {}
        for row in rows_as_dicts(read_results(table_dir)):
            key = tuple(row[c] for c in EVALUATION_KEY)
            if key not in latest or row["created_at"] >= latest[key]["created_at"]:
                latest[key] = row
        for row in latest.values():
            refs = [] if row["synthetic_source"] == "none" else row["synthetic_source"].split(",")
            config_url = join(table_dir, CONFIG_DIR, f"{row['config_hash']}.json")
            if exists(config_url):
                refs += list(_strings(json.loads(read_bytes(config_url))))
            used |= {location_key(ref) for ref in refs if ref and ref != "none"}
    return used


def plan_gc(
    runs_dir: str, policy: RetentionPolicy, results_dirs: Iterable[str], now: datetime | None = None
) -> dict[str, Any]:
    """Return {"remove": rows, "in_use": rows kept because an evaluation uses them, "kept": rows the policy keeps}
    over RUNS_DIR's catalogue (rows oldest first), plus {"half_removed": [{"url"}]} for folders a killed gc left;
    with a disk budget also {"within_budget": rows kept because they fit it, "bytes": {"kept", "budget"}}."""
    now = now or datetime.now(timezone.utc)
    rows = read_catalogue(runs_dir)
    used = runs_in_use(results_dirs)
    plan: dict[str, Any] = {"remove": [], "in_use": [], "kept": [], "half_removed": []}
    by_group: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault((row["dataset"], row["fold"]), []).append(row)
    for group in by_group.values():
        newest = {r["name"] for r in group[-policy.keep_last :]}
        for row in group:
            when = datetime.strptime(row["completed_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            young = policy.keep_days is not None and now - when < timedelta(days=policy.keep_days)
            if row["name"] in newest or young:
                plan["kept"].append(row)
            elif location_key(row["url"]) in used:
                plan["in_use"].append(row)
            else:
                plan["remove"].append(row)
    if policy.max_bytes is not None:
        _fit_budget(plan, policy.max_bytes)
    fs, path = resolve(runs_dir)
    if fs.isdir(path):
        for entry in sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)):
            if entry != CATALOGUE_DIR and exists(join(runs_dir, entry, TOMBSTONE)):
                plan["half_removed"].append({"url": join(runs_dir, entry), "name": entry})
    return plan


def remove_run(runs_dir: str, name: str, url: str) -> None:
    """Remove one catalogued run: tombstone, catalogue row, completion marker, then the folder (see the module)."""
    atomic_write_bytes(join(url, TOMBSTONE), b"")
    for file in (join(runs_dir, CATALOGUE_DIR, f"{name}.parquet"), join(url, MARKER_NAME)):
        fs, path = resolve(file)
        if fs.exists(path):
            fs.rm(path)
    remove_tree(url)


def parse_size(text: str) -> int:
    """Return the bytes of a budget written as a whole number with an optional binary suffix: "500M", "50G",
    "1T", "1048576"; a ValueError names the text otherwise."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    number, suffix = (value[:-1], value[-1]) if value[-1:] in SIZE_SUFFIXES and value[-1:] else (value, "")
    if not number.isdigit():
        raise ValueError(f"max_bytes: {text!r} is not a size; expected bytes or a number with K, M, G or T (50G)")
    return int(number) * SIZE_SUFFIXES[suffix]


def run_bytes(url: str) -> int:
    """The bytes a run folder takes (every file under it, on any fsspec filesystem)."""
    fs, path = resolve(url)
    return int(fs.du(path, total=True))


def _fit_budget(plan: dict[str, Any], max_bytes: int) -> None:
    """Keep the plan's removal candidates, newest first, while every catalogued run still fits max_bytes; the
    oldest ones beyond go. Adds each run's "bytes", the plan's "within_budget" rows (oldest first) and its
    "bytes": {"kept": bytes of the runs kept, "budget": max_bytes}."""
    protected = [*plan["kept"], *plan["in_use"]]
    for row in [*protected, *plan["remove"]]:
        row["bytes"] = run_bytes(row["url"]) if exists(row["url"]) else 0
    room = max_bytes - sum(row["bytes"] for row in protected)
    fits = []
    for row in reversed(plan["remove"]):  # newest first: the history kept is the most recent that fits
        if row["bytes"] <= room:
            room -= row["bytes"]
            fits.append(row)
    plan["within_budget"] = fits[::-1]
    plan["remove"] = [row for row in plan["remove"] if all(row is not kept for kept in fits)]
    plan["bytes"] = {"kept": max_bytes - room, "budget": max_bytes}


def run_gc(runs_dir: str, plan: dict[str, Any], log: Callable[[str], None] = print) -> list[str]:
    """Carry out plan_gc's plan: finish half-removed folders, then remove the runs; log each; return their URLs."""
    removed = []
    for row in [*plan["half_removed"], *plan["remove"]]:
        remove_run(runs_dir, row["name"], row["url"])
        log(f"removed {row['url']}")
        removed.append(row["url"])
    return removed
