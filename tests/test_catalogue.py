"""The catalogue of runs (issue 33, point 2), run selectors in learner configs, and retention (point 4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny import toy_run
from typer.testing import CliRunner

from maskforge.eval.folds import toy_fold
from maskforge.flows.cli import app
from maskforge.storage.catalogue import (
    CATALOGUE_DIR,
    CatalogueError,
    catalogue_row,
    read_catalogue,
    rebuild_catalogue,
    record_run,
    resolve_selector,
)
from maskforge.storage.reader import RunReader
from maskforge.storage.results import append_results, store_config
from maskforge.storage.retention import TOMBSTONE, RetentionPolicy, parse_size, plan_gc, run_bytes, run_gc
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.retention import collect_runs

runner = CliRunner()
FOLD = toy_fold(0)


def catalogued(runs: Path, name: str, fold: int = 0) -> str:
    """Write a tiny complete run RUNS/NAME of toy fold `fold` and record its catalogue row; return its URL."""
    url = toy_run(str(runs / name), FOLD.novel[:2], 1, fold=fold)
    reader = RunReader(url)
    record_run(str(runs), catalogue_row(url, reader.marker, reader.config))
    return url


@pytest.fixture
def runs(tmp_path) -> Path:
    """A runs folder with three catalogued runs of toy fold 0 (a, b, c in that order) and one of fold 1."""
    folder = tmp_path / "runs"
    for name in ("a", "b", "c"):
        catalogued(folder, name)
    catalogued(folder, "other", fold=1)
    return folder


def test_rows_name_each_complete_run_once_and_read_back_in_order(runs):
    rows = read_catalogue(str(runs))
    assert [(r["name"], r["dataset"], r["fold"], r["round"], r["samples"]) for r in rows] == [
        ("a", "toy", 0, 0, 2),
        ("b", "toy", 0, 0, 2),
        ("c", "toy", 0, 0, 2),
        ("other", "toy", 1, 0, 2),
    ]
    assert all(r["url"] == str(runs / r["name"]) and len(r["config_hash"]) in (0, 64) for r in rows)
    first = (runs / CATALOGUE_DIR / "a.parquet").read_bytes()
    reader = RunReader(str(runs / "a"))
    record_run(str(runs), catalogue_row(str(runs / "a"), reader.marker, reader.config))  # recorded again: kept
    assert (runs / CATALOGUE_DIR / "a.parquet").read_bytes() == first
    (runs / CATALOGUE_DIR / "b.parquet").unlink()
    toy_run(str(runs / "partial-never-finished"), FOLD.novel[:1], 1)
    (runs / "partial-never-finished" / "_COMPLETE.json").unlink()
    assert rebuild_catalogue(str(runs)) == [str(runs / CATALOGUE_DIR / "b.parquet")]  # complete runs only


def test_selectors_name_the_newest_runs_of_a_dataset_and_fold(runs):
    assert resolve_selector("latest:toy/0", str(runs), "f") == [str(runs / "c")]
    assert resolve_selector("last:2:toy/0", str(runs), "f") == [str(runs / "b"), str(runs / "c")]
    assert resolve_selector(f"last:9:toy/1@{runs}", "elsewhere", "f") == [str(runs / "other")]
    with pytest.raises(CatalogueError, match=r"f: 'latest:toy/2' names no run: the catalogue of .* lists toy/0, toy/1"):
        resolve_selector("latest:toy/2", str(runs), "f")
    with pytest.raises(CatalogueError, match=r"f: 'newest:toy/0' is not a run selector"):
        resolve_selector("newest:toy/0", str(runs), "f")
    with pytest.raises(CatalogueError, match="asks for 0 runs"):
        resolve_selector("last:0:toy/0", str(runs), "f")


def test_learner_configs_store_the_runs_a_selector_named(runs):
    from maskforge.tasks.gfss.config import parse_gfss_config
    from maskforge.tasks.hsnet.config import parse_hsnet_config

    hsnet = parse_hsnet_config({"run": {"out_dir": str(runs)}, "eval": {"synthetic_run": "latest:toy/0"}})
    assert hsnet.eval.synthetic_run == str(runs / "c")
    assert hsnet.resolved()["eval"]["synthetic_run"] == str(runs / "c")  # what config.yaml and the rows store
    explicit = parse_hsnet_config({"run": {"out_dir": str(runs)}, "eval": {"synthetic_run": str(runs / "c")}})
    assert hsnet.hash() == explicit.hash()
    gfss = parse_gfss_config(
        {"run": {"out_dir": "x"}, "dataset": {"name": "toy"}, "novel": {"synthetic_runs": [f"last:2:toy/0@{runs}"]}}
    )
    assert gfss.novel.synthetic_runs == (str(runs / "b"), str(runs / "c"))
    with pytest.raises(ConfigError, match=r"train.synthetic_run: 'last:2:toy/0' names 2 runs; this field takes one"):
        parse_hsnet_config({"run": {"out_dir": str(runs)}, "train": {"synthetic_run": "last:2:toy/0"}})
    with pytest.raises(ConfigError, match="eval.synthetic_run: 'latest:pascal/0' names no run"):
        parse_hsnet_config({"run": {"out_dir": str(runs)}, "eval": {"synthetic_run": "latest:pascal/0"}})


def _row(synthetic: str, created_at: str, config_hash: str) -> dict:
    """A benchmark row of toy fold 0 evaluated with `synthetic` at `created_at`."""
    return {
        "created_at": created_at, "model": "hsnet", "backbone": "tiny", "checkpoint": "ck", "dataset": "toy",
        "fold": 0, "split": "val", "shots": 1, "protocol": "fss-episodes", "setting": "1R+1S",
        "synthetic_source": synthetic, "synthetic_per_class": 1, "evaluated": 4, "runs": 1, "seed": 0,
        "metrics": {"miou": 0.5}, "class_iou": {}, "config_hash": config_hash, "code_version": "t",
    }  # fmt: skip


def test_gc_removes_old_runs_no_latest_evaluation_uses(runs, tmp_path):
    results = tmp_path / "results"
    # an older evaluation used run a, the latest one of the same setting uses run b: a is free, b is in use
    append_results(str(results), [_row(str(runs / "a"), "2026-01-01T00:00:00", "0" * 64)])
    append_results(str(results), [_row(str(runs / "b"), "2026-02-01T00:00:00", "1" * 64)])
    plan = plan_gc(str(runs), RetentionPolicy(keep_last=1), [str(results)])
    assert [r["name"] for r in plan["remove"]] == ["a"]
    assert [r["name"] for r in plan["in_use"]] == ["b"]
    assert sorted(r["name"] for r in plan["kept"]) == ["c", "other"]
    assert [r["name"] for r in plan_gc(str(runs), RetentionPolicy(1, keep_days=1), [str(results)])["remove"]] == []
    # a run named only in the latest row's stored config (a training run, say) is in use too
    config = {"train": {"synthetic_run": str(runs / "a")}}
    from maskforge.storage.yaml_config import digest

    append_results(str(results), [_row("none", "2026-03-01T00:00:00", digest(config))])
    store_config(str(results), digest(config), config)
    other = _row("none", "2026-03-01T00:00:00", digest(config)) | {"setting": "1R"}
    append_results(str(results), [other])
    assert "a" in [r["name"] for r in plan_gc(str(runs), RetentionPolicy(keep_last=1), [str(results)])["in_use"]]


def test_gc_command_dry_run_then_removal_and_a_half_removed_folder(runs, tmp_path):
    results = tmp_path / "results"
    dry = runner.invoke(app, ["runs", "gc", str(runs), "--keep-last", "2", "--results", str(results), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would remove {runs / 'a'}" in dry.output and (runs / "a").is_dir()
    (runs / "b" / TOMBSTONE).write_text("")  # a gc killed while removing b
    done = runner.invoke(app, ["runs", "gc", str(runs), "--keep-last", "2", "--results", str(results)])
    assert done.exit_code == 0, done.output
    assert not (runs / "a").exists() and not (runs / "b").exists() and (runs / "c").is_dir()
    assert [r["name"] for r in read_catalogue(str(runs))] == ["c", "other"]
    assert run_gc(str(runs), plan_gc(str(runs), RetentionPolicy(keep_last=2), [str(results)])) == []


def test_runs_ls_prints_the_catalogue_and_filters_it(runs):
    listed = runner.invoke(app, ["runs", "ls", str(runs), "--fold", "0", "--last", "2", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["name"] for r in json.loads(listed.output)] == ["b", "c"]
    table = runner.invoke(app, ["runs", "ls", str(runs)])
    assert table.exit_code == 0 and "4 complete" in " ".join(table.output.split())
    missing = runner.invoke(app, ["runs", "ls", os.fspath(runs / "nope")])
    assert missing.exit_code == 1 and "no such folder" in missing.output


@pytest.mark.prefect
def test_the_scheduled_retention_flow_reports_then_removes_and_publishes(runs, tmp_path, prefect_harness):
    """flows/retention.py:gc_runs, what the nightly `runs-gc` deployment runs: a dry run removes nothing, the real
    one removes the oldest runs beyond the policy, and a policy out of range fails before anything is read."""
    from prefect.client.orchestration import get_client

    from maskforge.flows.retention import gc_runs

    results = str(tmp_path / "results")
    dry = gc_runs(runs_dir=str(runs), keep_last=2, results=[results], dry_run=True)
    assert dry["removed"] == [str(runs / "a")] and (runs / "a").is_dir()
    done = gc_runs(runs_dir=str(runs), keep_last=2, results=[results])
    assert done["removed"] == [str(runs / "a")] and not (runs / "a").exists()
    assert sorted(Path(url).name for url in done["kept"]) == ["b", "c", "other"]
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    published = [a for a in artifact if a.key == "runs-gc"]
    assert published and "removed 1 run(s)" in published[0].data and str(runs / "a") in published[0].data
    with pytest.raises(ValueError, match="keep_last: expected 1 to 100000"):
        gc_runs.fn(runs_dir=str(runs), keep_last=0, results=[results])


def test_sizes_parse_with_binary_suffixes_and_refuse_anything_else():
    assert [parse_size(t) for t in ("1048576", "500M", "50G", "1t", "2KiB")] == [
        2**20,
        500 * 2**20,
        50 * 2**30,
        2**40,
        2048,
    ]
    for bad in ("", "G", "1.5G", "-3", "12X"):
        with pytest.raises(ValueError, match="max_bytes: .* is not a size"):
            parse_size(bad)
    with pytest.raises(ValueError, match="max_bytes: expected 1 to"):
        RetentionPolicy(1, max_bytes=2**51)


def test_a_disk_budget_keeps_the_newest_history_that_fits_and_reports_going_over(runs, tmp_path):
    """With max_bytes the runs beyond keep_last go oldest first only while all runs take more than the budget; the
    newest keep_last of each dataset fold are never removed for it, and a budget they alone exceed is reported."""
    results = [str(tmp_path / "results")]
    size = {name: run_bytes(str(runs / name)) for name in ("a", "b", "c", "other")}
    fits_b = size["b"] + size["c"] + size["other"]
    plan = plan_gc(str(runs), RetentionPolicy(keep_last=1, max_bytes=fits_b), results)
    assert [r["name"] for r in plan["remove"]] == ["a"] and [r["name"] for r in plan["within_budget"]] == ["b"]
    assert plan["bytes"] == {"kept": fits_b, "budget": fits_b}
    roomy = plan_gc(str(runs), RetentionPolicy(keep_last=1, max_bytes=10 * fits_b), results)
    assert roomy["remove"] == [] and [r["name"] for r in roomy["within_budget"]] == ["a", "b"]
    lines: list[str] = []
    report = collect_runs(str(runs), RetentionPolicy(keep_last=1, max_bytes=1), results, log=lines.append)
    assert sorted(Path(u).name for u in report["removed"]) == ["a", "b"] and (runs / "c").is_dir()
    assert report["bytes"] == {"kept": size["c"] + size["other"], "budget": 1}
    assert any(line.startswith("over budget: the runs kept take") for line in lines)
    done = runner.invoke(app, ["runs", "gc", str(runs), "--keep-last", "1", "--max-bytes", "1G", "--dry-run"])
    assert done.exit_code == 0 and "dry run: 0 run(s) would go, 2 kept by the policy" in done.output, done.output
    bad = runner.invoke(app, ["runs", "gc", str(runs), "--keep-last", "1", "--max-bytes", "lots"])
    assert bad.exit_code == 1 and "max_bytes: 'lots' is not a size" in bad.output
