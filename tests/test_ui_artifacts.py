"""UI artifacts' content without Prefect: rejected samples with scores, score histograms with cuts, trend charts."""

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from maskforge.storage.codec import ShardSample
from maskforge.storage.reader import RunReader
from maskforge.storage.results import append_results, read_results
from maskforge.storage.shards import RunWriter, write_config
from maskforge.tasks.artifacts import (
    read_rejected,
    rejected_markdown,
    rejected_record,
    rejected_url,
    score_histograms,
    scores_markdown,
)
from maskforge.tasks.config import RefinementConfig
from maskforge.tasks.hsnet.eval import trend_markdown


def _sample(i: int, source: str, scores: dict) -> ShardSample:
    label = np.zeros((32, 32), np.int32)
    label[8:20, 8:20] = 1
    meta = {
        "dataset": "toy", "fold": 0, "class_id": 1, "class_name": "red disc", "source": source, "mask_method": "x",
        "seed": i, "shot_ids": ["a"], "scores": scores, "config_hash": "h", "class_names": {"1": "red disc"},
    }  # fmt: skip
    image = np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)
    return ShardSample(f"toy-f0-c0001-{source}-{i:05d}", image, label, meta)


def _run(tmp_path: Path) -> str:
    """A run with 3 kept text samples; refinement rejected 2 (one OOD, one empty), recorded as the stage does."""
    run = str(tmp_path / "run")
    write_config(run, {"name": "r"})
    kept = [_sample(i, "text", {"consensus_iou": 0.9, "ood_iou": 0.8, "xattn_fg_fraction": 0.2}) for i in range(3)]
    with RunWriter(run, max_count=8) as writer:
        for sample in kept:
            writer.write(sample)
        writer.finish({"n_samples": 3})
    dropped = [
        _sample(7, "text", {"consensus_iou": 0.3, "ood_iou": 0.1, "xattn_fg_fraction": 0.05}),
        _sample(8, "embedding", {"consensus_iou": 0.0, "xattn_fg_fraction": 0.0}),
    ]
    reasons = {dropped[0].key: "ood", dropped[1].key: "empty"}
    record = rejected_record(1, "red disc", dropped, reasons, RefinementConfig(checkpoint="x", beta=0.5, alpha=0.8))
    path = Path(rejected_url(run, 1))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return run


def test_rejected_samples_show_with_reason_scores_and_thumbnail(tmp_path):
    run = _run(tmp_path)
    (record,) = read_rejected(run)
    assert [s["reason"] for s in record["samples"]] == ["ood", "empty"] and record["beta"] == 0.5
    text = rejected_markdown(run)
    assert "## red disc: 1 empty, 1 ood (alpha 0.8, beta 0.5)" in text
    assert "| toy-f0-c0001-text-00007 | ood | consensus_iou 0.300, ood_iou 0.100, xattn_fg_fraction 0.050 |" in text
    thumb = text.split("data:image/jpeg;base64,")[1].split(")")[0]
    assert Image.open(io.BytesIO(base64.b64decode(thumb))).size == (32, 32)  # never enlarged past the image
    assert "thumbnails left out" in rejected_markdown(run, budget=10)


def test_score_histograms_draw_kept_and_rejected_with_the_cuts(tmp_path):
    run = _run(tmp_path)
    reader = RunReader(run)
    png = score_histograms(reader, read_rejected(run))
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[0] == 120 and image.shape[1] == 120 + 3 * 220  # one class row, three panels
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert {(60, 110, 200), (215, 70, 60), (20, 150, 60)} <= colours  # kept, rejected, cut
    # the ood_iou panel's cut sits at beta = 0.5 of its plot width
    ood = image[:, 120 + 220 : 120 + 440]
    cut_columns = sorted({int(x) for x in np.nonzero((ood == (20, 150, 60)).all(axis=2))[1]})
    assert cut_columns and abs(np.mean(cut_columns) - (8 + 0.5 * 204)) <= 1.5
    assert "Green lines: alpha on consensus_iou" in scores_markdown(reader, read_rejected(run))


def test_trend_markdown_embeds_a_chart_of_miou_per_setting(tmp_path):
    folder = str(tmp_path / "results")
    base = {
        "model": "hsnet", "backbone": "tiny", "checkpoint": "c.safetensors", "dataset": "toy", "fold": 0,
        "split": "val", "shots": 1, "protocol": "fss-episodes", "synthetic_source": "none", "synthetic_per_class": 0,
        "evaluated": 10, "runs": 1, "seed": 0, "class_iou": {"1": 0.3}, "config_hash": "h", "code_version": "0",
    }  # fmt: skip
    for day, (real, syn) in enumerate([(0.30, 0.40), (0.33, 0.45)]):
        append_results(folder, [{**base, "created_at": f"2026-11-2{day}", "setting": s,
                                 "metrics": {"miou": m, "fb_iou": 0.5}}
                                for s, m in (("1R", real), ("1R+20S", syn))])  # fmt: skip
    text = trend_markdown(read_results(folder), "toy", 0, 1)
    data = text.split("data:image/png;base64,")[1].split(")")[0]
    chart = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    assert chart.shape == (240, 520, 3)
    assert ((chart == (60, 110, 200)).all(axis=2).sum() > 20) and ((chart == (215, 120, 40)).all(axis=2).sum() > 20)
