"""Generation rounds (issue 33, point 1): each round renders other samples, a rerun of a round is the same run, and
round 0 is the run as it was before rounds existed (same hash, same bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskforge.storage.catalogue import CATALOGUE_DIR, read_catalogue, resolve_selector
from maskforge.storage.reader import RunReader
from maskforge.tasks.config import parse_config
from maskforge.tasks.preflight import preflight
from maskforge.tasks.write_run import finish_run, run_url, start_run, write_class_part


def config(out: Path, **run):
    """A copy-paste-only toy config (48 px, one class, 3 samples) with run fields `run`."""
    return parse_config(
        {
            "run": {"name": "r", "out_dir": str(out), **run},
            "dataset": {"toy": {"image_size": 48, "n_train": 40, "n_val": 4}},
            "shots": {"k": 1},
            "base": {"subset_size": 4},
            "generation": {"samples_per_class": 3, "classes": ["red disc"]},
        }
    )


def generate(cfg) -> dict[str, bytes]:
    """Write the run of a config with the stage functions (no Prefect); return {sample key: image bytes}."""
    plan = preflight(cfg)
    url = start_run(cfg)["url"]
    parts = [write_class_part(cfg, plan, c.class_id, url) for c in plan.novel]
    finish_run(cfg, plan, parts, url)
    reader = RunReader(url)
    return {sample.key: sample.image.tobytes() for sample in reader}


def test_rounds_render_new_samples_and_a_round_reruns_identically(tmp_path):
    zero, explicit_zero = config(tmp_path), config(tmp_path, round=0)
    assert zero.hash() == explicit_zero.hash() and "round" not in _hashed(zero)
    one, two = config(tmp_path / "a", round=20261206), config(tmp_path / "a", round=20261207)
    assert len({zero.hash(), one.hash(), two.hash()}) == 3 and run_url(one) != run_url(two)
    first, second = generate(one), generate(two)
    assert first.keys() == second.keys()  # the same keys (class, source, index) ...
    assert all(first[k] != second[k] for k in first)  # ... with other pictures
    rows = read_catalogue(str(tmp_path / "a"))  # each completed round is catalogued with its round and counts
    assert [(r["round"], r["dataset"], r["fold"], r["samples"], r["url"]) for r in rows] == [
        (20261206, "toy", 0, 3, run_url(one)),
        (20261207, "toy", 0, 3, run_url(two)),
    ]
    assert resolve_selector("latest:toy/0", str(tmp_path / "a"), "f") == [run_url(two)]
    (tmp_path / "a" / CATALOGUE_DIR / f"{Path(run_url(one)).name}.parquet").unlink()  # killed before its row
    assert start_run(one)["complete"] and len(read_catalogue(str(tmp_path / "a"))) == 2  # the rerun writes it
    assert resolve_selector("latest:toy/0", str(tmp_path / "a"), "f") == [run_url(two)]  # newest round, still
    again = generate(config(tmp_path / "b", round=20261206))
    assert again == first  # a round rerun elsewhere is byte-identical
    assert generate(config(tmp_path / "c")) == generate(config(tmp_path / "d", round=0))
    assert one.run.data_seed() != zero.run.data_seed() == zero.run.seed


def _hashed(cfg) -> dict:
    """The run section as hash() covers it."""
    data = cfg.resolved()["run"]
    return {k: v for k, v in data.items() if not (k == "round" and v == 0)}


def test_the_trend_names_each_rows_data_round(tmp_path):
    from test_catalogue import _row

    from maskforge.storage.results import append_results, read_results
    from maskforge.tasks.hsnet.eval import trend_markdown

    one, two = config(tmp_path / "runs", round=20261206), config(tmp_path / "runs", round=20261207)
    generate(one), generate(two)
    results = str(tmp_path / "results")
    for cfg, when, score in ((one, "2026-12-06T03:00:00", 0.5), (two, "2026-12-07T03:00:00", 0.6)):
        append_results(results, [_row(run_url(cfg), when, "0" * 64) | {"metrics": {"miou": score, "fb_iou": 0.7}}])
    text = trend_markdown(read_results(results), "toy", 0, 1)
    assert "| 2026-12-06T03:00:00 | r20261206 |" in text and "| 2026-12-07T03:00:00 | r20261207 |" in text
    assert "| +10.00 |" in text  # the second night's change


def test_the_nightly_deployments_round_is_the_scheduled_date():
    from datetime import datetime, timezone

    from maskforge.flows.deployments import scheduled_round

    assert scheduled_round(None) is None and scheduled_round(7) == 7 and scheduled_round("20261206") == 20261206
    # outside a flow run Prefect's scheduled start is now; inside one, the run's expected start (tests/test_chain.py)
    assert scheduled_round("scheduled") == int(datetime.now(timezone.utc).strftime("%Y%m%d"))
    with pytest.raises(ValueError, match="round: expected a number or 'scheduled', got 'nightly'"):
        scheduled_round("nightly")


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
def test_only_a_newly_completed_run_announces_itself(tmp_path, monkeypatch):
    """The chain's triggers fire on maskforge.run.completed: a generation that completes a run emits it once, with
    the run's URL and round; rerunning that round finds the run complete and emits nothing (so starts nothing)."""
    import maskforge.flows.generate as generate_module
    from maskforge.flows.run_events import RUN_COMPLETED, run_resource_id

    announced = []
    monkeypatch.setattr(generate_module, "announce_run", lambda cfg, url, marker: announced.append((url, marker)))
    cfg = config(tmp_path, round=20261206)
    first = generate_module.generate(config=cfg)
    assert [url for url, _ in announced] == [first["url"]] and announced[0][1]["n_samples"] == 3
    again = generate_module.generate(config=cfg)
    assert again == {"url": first["url"], "complete": True} and len(announced) == 1
    assert (RUN_COMPLETED, run_resource_id("toy", 0)) == ("maskforge.run.completed", "maskforge.run.toy-f0")
