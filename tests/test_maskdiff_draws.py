"""MaskDiff reported as the paper reports: mean ± std over data-seed draws and over samplings, failed seeds retried
and reported, the --data-seeds option (tasks/maskdiff/aggregate.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff.aggregate import (
    aggregate_draws,
    draws_caption,
    draws_table,
    parse_data_seeds,
    run_draws,
    seed_config,
    write_draws,
)
from maskforge.tasks.maskdiff.config import load_maskdiff_config

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def fake_result(novel_segm: list[float], novel_bbox: float, base: float = 0.3) -> dict:
    """An eval_maskdiff-shaped result: per-sampling segm AP (novel as given, base and all constant) and bbox AP."""
    per_seed = [
        {s: {"ap": v if s == "novel" else base, "ap50": 2 * v if s == "novel" else base, "ap75": 0.0}
         for s in ("all", "base", "novel")}
        for v in novel_segm
    ]  # fmt: skip
    bbox = {
        s: {"ap": novel_bbox if s == "novel" else base, "ap50": 0.5, "ap75": -1.0} for s in ("all", "base", "novel")
    }
    return {"per_seed_segm": per_seed, "bbox": bbox}


def std(values: list[float]) -> float:
    """Population standard deviation (ddof 0), written out."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def test_mean_and_std_over_draws_and_samplings_match_a_hand_computation():
    draws = [[0.10, 0.20, 0.30], [0.40, 0.40, 0.40], [0.05, 0.15, 0.25]]
    bboxes = [0.2, 0.3, 0.7]
    out = aggregate_draws([fake_result(d, b) for d, b in zip(draws, bboxes)])
    novel = out["segm"]["novel"]["ap"]
    # by hand: per-draw means 0.2, 0.4, 0.15; their mean 0.25; population std sqrt(((-.05)^2+.15^2+(-.1)^2)/3)
    assert novel["per_draw"] == pytest.approx([0.2, 0.4, 0.15])
    assert novel["mean"] == pytest.approx(0.25)
    assert novel["std_draws"] == pytest.approx(math.sqrt((0.05**2 + 0.15**2 + 0.1**2) / 3))
    # within-draw sampling stds: sqrt(2/3) * 0.1, 0, sqrt(2/3) * 0.1 -> their mean
    assert novel["std_samplings"] == pytest.approx((2 * math.sqrt(2 / 3) * 0.1) / 3)
    assert novel["std_samplings"] == pytest.approx(sum(std(d) for d in draws) / 3)
    assert out["segm"]["novel"]["ap50"]["mean"] == pytest.approx(0.5)  # 2 x 0.25
    assert out["segm"]["base"]["ap"] == {"mean": pytest.approx(0.3), "std_draws": 0.0, "std_samplings": 0.0,
                                         "per_draw": pytest.approx([0.3] * 3)}  # fmt: skip
    bbox = out["bbox"]["novel"]["ap"]  # one value per draw: no sampling spread
    assert (bbox["mean"], bbox["std_draws"], bbox["std_samplings"]) == (
        pytest.approx(0.4), pytest.approx(std(bboxes)), 0.0
    )  # fmt: skip
    assert out["bbox"]["all"]["ap75"]["mean"] == -1.0  # COCO's "no ground truth" stays -1
    rows = draws_table({"summary": out})
    assert rows[2]["classes"] == "novel" and rows[2]["segm AP"] == f"25.00 ± {100 * std([0.2, 0.4, 0.15]):.2f}"
    assert rows[1]["classes"] == "base" and rows[1]["bbox AP"] == "30.00 ± 0.00"


def test_a_failed_seed_is_retried_then_reported_never_dropped():
    calls: list[int] = []

    def one(seed: int) -> dict:
        calls.append(seed)
        if seed == 2 or (seed == 1 and calls.count(1) == 1):  # seed 2 always fails, seed 1 fails once
            raise RuntimeError(f"stage of seed {seed} ran out of memory")
        return fake_result([0.1 * (seed + 1)] * 2, 0.2)

    report = run_draws([0, 1, 2], one, retries=1, log=lambda _: None)
    assert calls == [0, 1, 1, 2, 2]
    assert sorted(report["completed"]) == ["0", "1"] and report["draws"] == 2 and not report["complete"]
    (failed,) = report["failed"]
    assert (failed["data_seed"], failed["attempts"]) == (2, 2)
    assert failed["error"] == "RuntimeError: stage of seed 2 ran out of memory"
    assert report["summary"]["segm"]["novel"]["ap"]["mean"] == pytest.approx(0.15)  # over the two that completed
    line = draws_caption(report, "MaskDiff tfa 5-shot on minival")
    assert line.startswith("MaskDiff tfa 5-shot on minival: 2 of 3 draws (data seeds [0, 1, 2])")
    assert "data seed 2 FAILED after 2 attempt(s): RuntimeError: stage of seed 2 ran out of memory" in line
    nothing = run_draws([4], lambda s: 1 / 0, retries=0, log=lambda _: None)
    assert nothing["summary"] is None and nothing["failed"][0]["error"] == "ZeroDivisionError: division by zero"


def test_data_seeds_are_parsed_and_bounded():
    assert parse_data_seeds("0-9") == list(range(10))
    assert parse_data_seeds("3") == [3] and parse_data_seeds("0,2, 5") == [0, 2, 5] and parse_data_seeds("7-8,1") == [
        7, 8, 1
    ]  # fmt: skip
    for bad, message in [("0-10", "expected seeds in 0-9"), ("5-2", "low-high"), ("a", "like 0-9"), ("1,1", "twice")]:
        with pytest.raises(ConfigError, match=message):
            parse_data_seeds(bad)


def test_seed_configs_and_the_written_report(tmp_path):
    config = load_maskdiff_config(
        ROOT / "configs" / "maskdiff-tfa.yaml", {"eval.results_dir": str(tmp_path / "results")}
    )
    three = seed_config(config, 3)
    assert three.finetune.data_seed == 3 and config.finetune.data_seed == 0
    assert three.base_dir() == config.base_dir() and three.finetune_dir() != config.finetune_dir()
    report = run_draws([0, 1], lambda s: fake_result([0.2, 0.4], 0.1), log=lambda _: None)
    url = write_draws(config, report)
    assert Path(url).parent == tmp_path / "results" / "maskdiff-draws" and "-tfa-k5-seeds0-1-" in url
    data = json.loads(Path(url).read_text())
    assert data["benchmark"] == {"split": "tfa", "eval_split": "minival", "shots": 5} and data["draws"] == 2
    assert data["summary"]["segm"]["novel"]["ap"]["mean"] == pytest.approx(0.3)


def test_cli_refuses_bad_data_seeds_on_one_line():
    out = runner.invoke(app, ["maskdiff", "eval", str(ROOT / "configs" / "maskdiff-tfa.yaml"), "--data-seeds", "0-12"])
    assert out.exit_code == 1 and "--data-seeds: '0-12' in '0-12'; expected seeds in 0-9" in out.output


@pytest.mark.prefect
def test_the_draws_flow_retries_reports_and_writes(prefect_harness, monkeypatch, tmp_path):
    """The flow maskdiff_draws (built from tasks/maskdiff/learner.py's Sweep) under Prefect: each seed's
    train-and-evaluate runs with its data seed, a failing one is retried then reported, and the aggregate of the
    other is written (the retry logic itself is covered without Prefect above)."""
    from maskforge.flows.learners import learner_flows

    seen: list[int] = []

    def fake_train_eval(config):
        seen.append(config.finetune.data_seed)
        if config.finetune.data_seed == 1:
            raise RuntimeError("no GPU left")
        return fake_result([0.1, 0.3], 0.2)

    monkeypatch.setitem(learner_flows("maskdiff"), "train_eval_maskdiff", fake_train_eval)
    config = load_maskdiff_config(ROOT / "configs" / "maskdiff-tfa.yaml", {"eval.results_dir": str(tmp_path)})
    report = learner_flows("maskdiff")["maskdiff_draws"](config=config, data_seeds=[0, 1], retries=1)
    assert seen == [0, 1, 1] and report["draws"] == 1 and report["failed"][0]["data_seed"] == 1
    data = json.loads(Path(report["draws_file"]).read_text())
    assert data["failed"][0]["error"] == "RuntimeError: no GPU left" and not data["complete"]
    assert data["summary"]["segm"]["novel"]["ap"]["mean"] == pytest.approx(0.2)
