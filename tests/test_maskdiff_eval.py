"""MaskDiff evaluation: COCO AP from pycocotools, batched sampling, K-shot folder checks, benchmark rows and trend."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskforge.eval.coco_export import coco_json
from maskforge.eval.datasets import open_dataset
from maskforge.eval.folds import get_fold
from maskforge.eval.fsis_protocol import ShotInstance, kshot_instances
from maskforge.models.maskdiff import detector as det
from maskforge.models.maskdiff import mask_head as head
from maskforge.storage.results import append_results, read_results, rows_as_dicts
from maskforge.storage.shards import sha256_file
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff import evaluate
from maskforge.tasks.maskdiff.config import parse_maskdiff_config

SHOTS, DATA_SEED, IMAGES, BATCH, SEEDS = 2, 0, 8, 4, 2
FILES = ("detector.safetensors", "mask_head.safetensors", "kshot.json")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


def toy_config(out: Path, **eval_overrides):
    """The toy-world config: 64-px toy, tiny detector and head (32 px), DDIM 3 steps, 2 seeds, 8 images in 2 batches."""
    return parse_maskdiff_config(
        {
            "run": {"name": "toy", "out_dir": str(out / "runs"), "device": "cpu", "threads": 1},
            "dataset": {"name": "toy", "toy": {"image_size": 64, "n_train": 120, "n_val": 16}},
            "detector": {"backbone": "tiny", "min_size": 64, "max_size": 64},
            "head": {"arch": "tiny", "size": 32, "sampler": "ddim", "ddim_steps": 3},
            "base": {"detector_steps": 2, "head_steps": 2, "batch_size": 2},
            "finetune": {"shots": SHOTS, "data_seed": DATA_SEED, "detector_steps": 2, "head_steps": 2, "batch_size": 2},
            "eval": {
                "split": "val",
                "max_images": IMAGES,
                "sampling_seeds": SEEDS,
                "batch_images": BATCH,
                "results_dir": str(out / "results"),
                **eval_overrides,
            },
        }
    )


def build_finetune_dir(config) -> Path:
    """Write an untrained K-shot stage folder: tiny detector over base + novel, tiny head, kshot.json, COMPLETE.json."""
    dataset = open_dataset(config.dataset)
    fold = get_fold(dataset.name, config.dataset.fold)
    all_ids = sorted(fold.base + fold.novel)
    folder = Path(config.finetune_dir())
    folder.mkdir(parents=True)
    spec = replace(det.tiny_spec(len(all_ids)), detections_per_img=5)  # 40 detections: a quick sampling
    det.save_detector(str(folder / FILES[0]), det.build_detector(spec), spec, all_ids, {})
    hspec = replace(head.tiny_spec(len(dataset.classes()), SHOTS), size=config.head.size)
    torch.manual_seed(0)
    head.save_mask_head(folder / FILES[1], head.build_mask_head(hspec), hspec, {})
    chosen = kshot_instances(dataset, "train", all_ids, SHOTS, DATA_SEED)
    classes = {str(c): [{"image_id": s.image_id, "index": s.index} for s in v] for c, v in chosen.items()}
    (folder / FILES[2]).write_text(json.dumps({"shots": SHOTS, "data_seed": DATA_SEED, "classes": classes}))
    (folder / "COMPLETE.json").write_text(json.dumps({"files": {n: sha256_file(str(folder / n)) for n in FILES}}))
    return folder


def ground_truth(config) -> dict:
    """The COCO dict of the evaluated images (first IMAGES sorted val ids)."""
    dataset = open_dataset(config.dataset)
    return coco_json(dataset, "val", sorted(dataset.image_ids("val"))[:IMAGES])


def direct_ap(gt_data: dict, results: list[dict], iou_type: str, cats) -> list[float]:
    """AP, AP50, AP75 straight from pycocotools on the same results (masks alone for segm, boxes alone for bbox)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(gt_data))
        gt.createIndex()
        drop = "bbox" if iou_type == "segm" else "segmentation"
        dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
        ev = COCOeval(gt, dt, iou_type)
        ev.params.catIds = sorted(cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:3]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy config with its untrained K-shot folder."""
    config = toy_config(tmp_path_factory.mktemp("maskdiff-eval"))
    build_finetune_dir(config)
    return config


@pytest.fixture(scope="module")
def run(world):
    """One evaluation, counting sample_masks calls and capturing every COCOeval's results."""
    calls, evals = [], []
    real_sample, real_eval = evaluate.sample_masks, evaluate.coco_eval

    def counting_sample(unet, cond, class_ids, null_class, **kwargs):
        calls.append({"n": cond.shape[0], "class_ids": class_ids.tolist(), "null": null_class, **kwargs})
        return real_sample(unet, cond, class_ids, null_class, **kwargs)

    def capturing_eval(gt, results, iou_type, cat_ids):
        evals.append({"results": json.loads(json.dumps(results)), "iou_type": iou_type, "cats": sorted(cat_ids)})
        return real_eval(gt, results, iou_type, cat_ids)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "sample_masks", counting_sample)
        mp.setattr(evaluate, "coco_eval", capturing_eval)
        result = evaluate.eval_maskdiff(world, log=lambda _: None)
    return result, calls, evals


def test_ap_comes_from_pycocotools(world, run):
    result, _, evals = run
    fold = get_fold("toy", 0)
    gt = ground_truth(world)
    segm_novel = [e for e in evals if e["iou_type"] == "segm" and e["cats"] == sorted(fold.novel)]
    assert len(segm_novel) == SEEDS and all(e["results"] for e in segm_novel)
    for s, e in enumerate(segm_novel):
        direct = direct_ap(gt, e["results"], "segm", fold.novel)
        assert [result["per_seed_segm"][s]["novel"][k] for k in ("ap", "ap50", "ap75")] == direct
        assert result["per_seed_novel_segm_ap"][s] == direct[0]
    assert result["segm"]["novel"]["ap"] == pytest.approx(np.mean(result["per_seed_novel_segm_ap"]), abs=1e-12)
    bbox_all = [e for e in evals if e["iou_type"] == "bbox" and e["cats"] == sorted(fold.base + fold.novel)]
    assert len(bbox_all) == 1 and all("segmentation" not in r for r in bbox_all[0]["results"])
    assert [result["bbox"]["all"][k] for k in ("ap", "ap50", "ap75")] == direct_ap(
        gt, bbox_all[0]["results"], "bbox", fold.base + fold.novel
    )
    # segm results: one record per detection, per seed, with the export's image ids and detector class ids
    ids = {img["id"] for img in gt["images"]}
    for e in segm_novel:
        assert len(e["results"]) == result["detections"]
        assert {r["image_id"] for r in e["results"]} <= ids
        assert {r["category_id"] for r in e["results"]} <= set(fold.base + fold.novel)
        assert all(r["segmentation"]["size"] == [64, 64] and 0 <= r["score"] <= 1 for r in e["results"])
    # two seeds sample different masks
    a, b = (tuple(r["segmentation"]["counts"] for r in e["results"]) for e in segm_novel)
    assert a != b


def test_ap_equals_direct_cocoeval_on_nontrivial_scores(world, box_masks):
    result, evals = box_masks
    fold = get_fold("toy", 0)
    subsets = {"all": sorted(fold.base + fold.novel), "base": sorted(fold.base), "novel": sorted(fold.novel)}
    gt = ground_truth(world)
    assert len(evals) == 3 * SEEDS + 3
    for name, cats in subsets.items():
        segm = [e for e in evals if e["iou_type"] == "segm" and e["cats"] == cats]
        bbox = [e for e in evals if e["iou_type"] == "bbox" and e["cats"] == cats]
        assert len(segm) == SEEDS and len(bbox) == 1
        for s, e in enumerate(segm):
            direct = direct_ap(gt, e["results"], "segm", cats)
            assert [result["per_seed_segm"][s][name][k] for k in ("ap", "ap50", "ap75")] == direct
            assert 0.05 < direct[0] < 0.95  # box-shaped masks: neither a miss nor a hit
        assert [result["bbox"][name][k] for k in ("ap", "ap50", "ap75")] == direct_ap(
            gt, bbox[0]["results"], "bbox", cats
        )


def test_result_fields_and_ranges(run):
    result, _, _ = run
    assert (result["dataset"], result["fold"], result["split"], result["shots"], result["data_seed"]) == (
        "toy",
        0,
        "val",
        SHOTS,
        DATA_SEED,
    )
    assert result["images"] == IMAGES and result["sampling_seeds"] == SEEDS and result["detections"] > 0
    for kind in ("segm", "bbox"):
        for name in ("all", "base", "novel"):
            for key in ("ap", "ap50", "ap75"):
                value = result[kind][name][key]
                assert value == -1 or 0 <= value <= 1, (kind, name, key, value)
                if kind == "segm":
                    assert result[kind][name][f"{key}_std"] >= 0
    for seed in result["per_seed_segm"]:
        assert all(v == -1 or 0 <= v <= 1 for scores in seed.values() for v in scores.values())
    assert all(0 <= v <= 1 for v in result["per_class_segm_ap"].values())
    assert result["synthetic_supports_skipped"] == 0 and result["seconds"] > 0


def test_sampling_is_batched(run):
    result, calls, _ = run
    batches = -(-IMAGES // BATCH)
    assert len(calls) == SEEDS * batches
    per_seed = [c["n"] for c in calls[::SEEDS]]  # batch-major order: seeds of batch 0, then of batch 1
    assert sum(per_seed) == result["detections"] and all(n > 0 for n in per_seed)
    assert all(c["n"] == len(c["class_ids"]) for c in calls)
    null = 16  # toy: 16 classes, null index = 16
    assert all(c["null"] == null and all(0 <= i < null for i in c["class_ids"]) for c in calls)
    assert all(c["scheduler_kind"] == "ddim" and c["steps"] == 3 and c["w"] == 5.0 for c in calls)
    seeds = [c["generator"].initial_seed() for c in calls]
    assert len(set(seeds)) == len(seeds)


def test_untrained_folder_is_a_config_error(tmp_path):
    config = toy_config(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(config.finetune_dir()) + ".*train first"):
        evaluate.eval_maskdiff(config, log=lambda _: None)


@pytest.mark.parametrize("name", ["detector.safetensors", "kshot.json"])
def test_tampered_file_fails_its_sha256(world, tmp_path, name):
    config = toy_config(tmp_path)
    shutil.copytree(world.finetune_dir(), config.finetune_dir())
    path = Path(config.finetune_dir(), name)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": does not match its sha256"):
        evaluate.eval_maskdiff(config, log=lambda _: None)


def test_marker_must_list_every_file(world, tmp_path):
    config = toy_config(tmp_path)
    folder = Path(shutil.copytree(world.finetune_dir(), config.finetune_dir()))
    marker = json.loads((folder / "COMPLETE.json").read_text())
    del marker["files"]["kshot.json"]
    (folder / "COMPLETE.json").write_text(json.dumps(marker))
    with pytest.raises(ConfigError, match=r"COMPLETE.json: 'files' does not list \['kshot.json'\]"):
        evaluate.check_finetune_dir(str(folder))


def test_kshot_synthetic_entries_are_skipped_and_counted(world, tmp_path):
    path = tmp_path / "kshot.json"
    entries = [{"run": "runs/x", "key": "k0", "component": 0}, {"image_id": "train_000001", "index": 0}]
    path.write_text(json.dumps({"shots": 1, "data_seed": 3, "classes": {"2": entries}}))
    kshot, skipped = evaluate.read_kshot(path, 1, 3)
    assert kshot == {2: [ShotInstance("train_000001", 0)]} and skipped == 1
    with pytest.raises(ConfigError, match="finetune.shots 2"):
        evaluate.read_kshot(path, 2, 3)
    dataset = open_dataset(world.dataset)
    crops = evaluate.class_supports(dataset, kshot, [2], 1, 32, str(path))
    assert crops[2].shape == (1, 3, 32, 32) and crops[2].abs().max() <= 1
    with pytest.raises(ConfigError, match="class 2 has 1 dataset instance.*2-shot"):
        evaluate.class_supports(dataset, kshot, [2], 2, 32, str(path))


def test_no_detection_gives_zero_ap(tmp_path, world):
    config = toy_config(tmp_path, score_threshold=0.99)
    shutil.copytree(world.finetune_dir(), config.finetune_dir())
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "sample_masks", lambda *a, **k: calls.append(1))
        result = evaluate.eval_maskdiff(config, log=lambda _: None)
    assert result["detections"] == 0 and calls == []
    assert result["segm"]["all"]["ap"] == 0.0 and result["segm"]["all"]["ap_std"] == 0.0
    assert result["bbox"]["all"] == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}


def oracle_eval(config, fill_boxes: bool) -> dict:
    """Evaluate with a detector that returns the ground-truth boxes (score 1) and a head that returns their mask
    crops (or, with fill_boxes, all-foreground crops: box-shaped masks)."""
    dataset = open_dataset(config.dataset)
    all_ids = sorted(get_fold("toy", 0).base + get_fold("toy", 0).novel)
    queue = sorted(dataset.image_ids("val"))[:IMAGES]
    state = {}

    def fake_detect(model, images, score_threshold):
        outs, masks, boxes = [], [], []
        for image in images:
            record = dataset.load(queue.pop(0))
            assert torch.equal((image * 255).round().byte().permute(1, 2, 0), torch.from_numpy(record.image))
            b = [[x, y, x + w, y + h] for x, y, w, h in (i.bbox for i in record.instances)]
            outs.append(
                {
                    "boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.tensor([all_ids.index(i.class_id) + 1 for i in record.instances]),
                    "scores": torch.ones(len(b)),
                }
            )
            masks += [i.mask for i in record.instances]
            boxes += b
        state["crops"] = head.mask_targets(masks, np.asarray(boxes, np.float32), config.head.size) > 0
        return outs

    def fake_sample(unet, cond, class_ids, null_class, **kwargs):
        assert cond.shape[0] == len(state["crops"])
        return torch.ones_like(state["crops"]) if fill_boxes else state["crops"].clone()

    evals, real_eval = [], evaluate.coco_eval

    def capturing_eval(gt, results, iou_type, cat_ids):
        evals.append({"results": json.loads(json.dumps(results)), "iou_type": iou_type, "cats": sorted(cat_ids)})
        return real_eval(gt, results, iou_type, cat_ids)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "detect", fake_detect)
        mp.setattr(evaluate, "sample_masks", fake_sample)
        mp.setattr(evaluate, "coco_eval", capturing_eval)
        return evaluate.eval_maskdiff(config, log=lambda _: None), evals


@pytest.fixture(scope="module")
def perfect(world):
    """An evaluation with ground-truth detections and ground-truth mask crops."""
    return oracle_eval(world, fill_boxes=False)[0]


@pytest.fixture(scope="module")
def box_masks(world):
    """Ground-truth detections with box-shaped masks (segm AP strictly between 0 and 1) and the COCOeval inputs."""
    return oracle_eval(world, fill_boxes=True)


def test_perfect_detections_and_masks(perfect, world):
    gt = ground_truth(world)
    assert perfect["detections"] == len(gt["annotations"])
    present = {a["category_id"] for a in gt["annotations"]}
    fold = get_fold("toy", 0)
    assert present & set(fold.base) and present & set(fold.novel)
    for name in ("all", "base", "novel"):
        assert perfect["bbox"][name]["ap"] == 1.0
        assert perfect["segm"][name]["ap"] >= 0.9 and perfect["segm"][name]["ap50"] == 1.0
        assert perfect["segm"][name]["ap_std"] == 0.0  # the fake head ignores the seed


def test_box_shaped_masks_score_below_true_masks(perfect, box_masks):
    boxes = box_masks[0]
    assert boxes["bbox"] == perfect["bbox"]  # box AP does not depend on the masks
    assert boxes["segm"]["all"]["ap"] < perfect["segm"]["all"]["ap"] - 0.2  # discs, triangles, stars are no boxes


def test_summary_table(perfect):
    table = evaluate.summary_table(perfect)
    assert [r["classes"] for r in table] == ["all", "base", "novel"]
    for row in table:
        assert row["bbox AP"] == "100.0" and row["segm AP50"] == "100.0" and row["split"] == "val"
        assert re.fullmatch(r"\d+\.\d ± 0\.0", row["segm AP"])


def test_benchmark_rows_round_trip(world, run, tmp_path):
    result = run[0]
    rows = evaluate.benchmark_rows(world, result)
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["protocol"], row["setting"], row["backbone"]) == (
        "maskdiff",
        "fsis-coco",
        "K-shot",
        "tiny",
    )
    assert (row["shots"], row["seed"], row["evaluated"], row["runs"]) == (SHOTS, DATA_SEED, IMAGES, SEEDS)
    assert row["synthetic_source"] == "none" and row["checkpoint"] == world.finetune_dir()
    assert row["metrics"]["segm_ap_novel"] == result["segm"]["novel"]["ap"]
    assert row["metrics"]["segm_ap_novel_std"] == result["segm"]["novel"]["ap_std"]
    assert row["metrics"]["bbox_ap50_base"] == result["bbox"]["base"]["ap50"]
    assert len(row["metrics"]) == 3 * 3 * 3  # (segm, segm std, bbox) x (ap, ap50, ap75) x (all, base, novel)
    append_results(str(tmp_path / "results"), rows)
    back = rows_as_dicts(read_results(str(tmp_path / "results")))
    assert back == rows


def test_trend_lists_maskdiff_rows_only(world, run, tmp_path):
    row = evaluate.benchmark_rows(world, run[0])[0]
    later = {**row, "created_at": "2999-01-01T00:00:00+00:00", "checkpoint": "runs/toy-later"}
    later["metrics"] = {**row["metrics"], "segm_ap_novel": row["metrics"]["segm_ap_novel"] + 0.1}
    other_shots = {**row, "shots": 5, "checkpoint": "runs/toy-k5"}
    gfss = {**row, "model": "gfss-finetune", "protocol": "gfss-pifs", "checkpoint": "runs/gfss-ckpt"}
    hsnet = {**row, "model": "hsnet", "protocol": "fss-episodes", "checkpoint": "runs/hsnet-ckpt"}
    append_results(str(tmp_path / "results"), [row, later, other_shots, gfss, hsnet])
    md = evaluate.trend_markdown(read_results(str(tmp_path / "results")), "toy", 0, SHOTS)
    assert md.startswith(f"# MaskDiff trend: toy fold 0, {SHOTS}-shot")
    assert "## K-shot" in md and "data:image/png;base64," in md
    lines = [line for line in md.splitlines() if line.startswith("| 2")]
    assert len(lines) == 2 and Path(world.finetune_dir()).name in lines[0] and "toy-later" in lines[1]
    assert lines[1].endswith("| +10.00 |")
    for absent in ("toy-k5", "gfss-ckpt", "hsnet-ckpt"):
        assert absent not in md
