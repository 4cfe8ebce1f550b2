"""MaskDiff training stages on the toy world: base folder and reuse, K-shot surgery and fine-tuning, synthetic
components, and named errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import toy_run

from maskforge.eval.datasets import open_dataset
from maskforge.eval.folds import toy_fold
from maskforge.eval.fsis_protocol import FsisError
from maskforge.models.maskdiff.detector import load_detector, predictor_kind
from maskforge.models.maskdiff.mask_head import load_mask_head
from maskforge.storage.codec import ShardSample
from maskforge.storage.reader import RunReader
from maskforge.storage.shards import RunWriter, write_config
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff.config import parse_maskdiff_config
from maskforge.tasks.maskdiff.synthetic import synthetic_instances
from maskforge.tasks.maskdiff.train import (
    COMPLETE,
    DETECTOR_FILE,
    HEAD_FILE,
    KSHOT_FILE,
    detector_lr_factor,
    head_spec,
    pick_supports,
    train_maskdiff_base,
    train_maskdiff_finetune,
)

TOY = {"seed": 0, "image_size": 64, "n_train": 120, "n_val": 16}
FOLD = toy_fold(0)
SHOTS = 2


def config(tmp: Path, **sections) -> dict:
    """The toy test config: 64 px world, tiny detector and head (32 px), a few steps of each stage."""
    data = {
        "run": {"name": "t", "out_dir": str(tmp / "runs"), "device": "cpu", "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": TOY},
        "detector": {"backbone": "tiny", "min_size": 64, "max_size": 64},
        "head": {"arch": "tiny", "size": 32, "p_uncond": 0.2},
        "base": {"detector_steps": 3, "detector_lr": 0.01, "head_steps": 2, "batch_size": 4},
        "finetune": {
            "shots": SHOTS,
            "detector_steps": 2,
            "detector_lr": 0.05,
            "head_steps": 2,
            "head_lr": 1e-3,
            "batch_size": 4,
        },  # fmt: skip
        "eval": {"results_dir": str(tmp / "results")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def quiet(_: str) -> None:
    """Swallow log lines."""


def blob_run(url: str, dataset: str = "toy") -> str:
    """Write a complete run: one sample of novel class 1 with two blobs and a 4-pixel speck between them (raster
    order: blob, speck, blob), and one sample of base class 2."""
    write_config(url, {"dataset": {"name": dataset, "fold": 0, "toy": TOY, "root": None}, "run": {"seed": 0}})
    rng = np.random.default_rng(0)
    with RunWriter(url, max_count=4) as writer:
        for i, cid in enumerate((1, 2)):
            label = np.zeros((40, 40), np.int32)
            label[2:8, 2:8] = cid  # 36 px
            label[20:22, 20:22] = cid  # 4 px: dropped
            label[30:36, 28:38] = cid  # 60 px
            meta = {
                "dataset": "toy", "fold": 0, "class_id": cid, "class_name": f"c{cid}", "source": "text",
                "mask_method": "semi-accepted", "seed": i, "shot_ids": [], "scores": {}, "config_hash": "h",
            }  # fmt: skip
            image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            writer.write(ShardSample(f"toy-f0-c{cid:04d}-text-{i:05d}", image, label, meta))
        writer.finish({"n_samples": 2})
    return url


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The base stage and a plain K-shot stage of the toy config, trained once for the module."""
    tmp = tmp_path_factory.mktemp("maskdiff")
    cfg = parse_maskdiff_config(config(tmp))
    base = train_maskdiff_base(cfg, log=quiet)
    finetune = train_maskdiff_finetune(cfg, log=quiet)
    return tmp, cfg, base, finetune


def test_base_stage_writes_its_folder_and_is_reused(trained):
    tmp, cfg, base, _ = trained
    folder = Path(cfg.base_dir())
    names = {p.name for p in folder.iterdir()}
    assert names == {DETECTOR_FILE, HEAD_FILE, "config.yaml", "train.json", COMPLETE}
    marker = json.loads((folder / COMPLETE).read_text())
    assert set(marker["files"]) == names - {COMPLETE}
    for name, digest in marker["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert (
        base["stage_dir"] == cfg.base_dir()
        and base["complete"]
        and len(base["detector_losses"]) == 3
        and len(base["head_losses"]) == 2
    )
    assert all(np.isfinite(base["detector_losses"] + base["head_losses"]))
    assert sorted(int(c) for c in base["instances_per_class"]) == sorted(FOLD.base)
    lines = []
    again = train_maskdiff_base(cfg, log=lines.append)
    assert again["seconds"] == base["seconds"] and lines == [f"already trained: {cfg.base_dir()}"]
    _, spec, class_ids, meta = load_detector(str(folder / DETECTOR_FILE))
    assert class_ids == sorted(FOLD.base) and spec.num_classes == 12 and meta["stage"] == "base"
    _, hspec, _ = load_mask_head(folder / HEAD_FILE)
    assert (hspec.num_classes, hspec.shots, hspec.size) == (16, SHOTS, 32)


def test_prediction_type_is_trained_and_hashed_sampling_is_not(tmp_path):
    plain = parse_maskdiff_config(config(tmp_path))
    v = parse_maskdiff_config(config(tmp_path, head={"prediction_type": "v_prediction"}))
    sampled = parse_maskdiff_config(config(tmp_path, head={"guidance": 1.0, "sampler": "ddim", "ddim_steps": 7}))
    assert v.base_dir() != plain.base_dir() and v.finetune_dir() != plain.finetune_dir()
    assert sampled.base_dir() == plain.base_dir() and sampled.finetune_dir() == plain.finetune_dir()
    assert head_spec(v, 16).prediction_type == "v_prediction" and head_spec(plain, 16).prediction_type == "epsilon"
    with pytest.raises(ConfigError, match="prediction_type"):
        parse_maskdiff_config(config(tmp_path, head={"prediction_type": "sample"}))


def test_finetune_stage_surgery_kshot_set_and_heads(trained):
    tmp, cfg, _, report = trained
    folder = Path(cfg.finetune_dir())
    assert {p.name for p in folder.iterdir()} == {
        DETECTOR_FILE, HEAD_FILE, KSHOT_FILE, "config.yaml", "train.json", COMPLETE
    }  # fmt: skip
    kshot = json.loads((folder / KSHOT_FILE).read_text())
    assert (kshot["shots"], kshot["data_seed"]) == (SHOTS, 0)
    assert sorted(int(c) for c in kshot["classes"]) == list(range(1, 17))
    dataset = open_dataset(cfg.dataset)
    for cid, entries in kshot["classes"].items():
        assert len(entries) == SHOTS and len({(e["image_id"], e["index"]) for e in entries}) == SHOTS
        for e in entries:
            inst = dataset.load(e["image_id"]).instances[e["index"]]
            assert inst.class_id == int(cid) and not inst.iscrowd
    assert report["synthetic_samples"] == 0 and report["instances"] == 16 * SHOTS
    base_model, _, _, _ = load_detector(str(Path(cfg.base_dir()) / DETECTOR_FILE))
    model, spec, class_ids, _ = load_detector(str(folder / DETECTOR_FILE))
    assert class_ids == list(range(1, 17)) and spec.num_classes == 16 and predictor_kind(model) == "cosine"
    before, after = base_model.state_dict(), model.state_dict()
    predictor = "roi_heads.box_predictor."
    assert {k for k in before if not k.startswith(predictor)} == {k for k in after if not k.startswith(predictor)}
    for key, value in before.items():
        if not key.startswith(predictor):
            assert torch.equal(value, after[key]), key
    assert after[predictor + "cls_score.weight"].shape[0] == 17 and predictor + "cls_score.bias" not in after
    assert after[predictor + "bbox_pred.weight"].shape[0] == 17 * 4
    # a base class's row started as its base row (surgery) and moved with fine-tuning; label = class id here
    base_rows = before[predictor + "cls_score.weight"][[0] + [FOLD.base.index(c) + 1 for c in FOLD.base]]
    tuned_rows = after[predictor + "cls_score.weight"][[0, *FOLD.base]]
    assert base_rows.shape == tuned_rows.shape and not torch.equal(base_rows, tuned_rows)
    assert torch.allclose(base_rows, tuned_rows, atol=0.05)
    assert report["trainable"] == [predictor + n for n in ("cls_score.weight", "bbox_pred.weight", "bbox_pred.bias")]
    base_head, _, _ = load_mask_head(Path(cfg.base_dir()) / HEAD_FILE)
    head, _, _ = load_mask_head(folder / HEAD_FILE)
    h0, h1 = base_head.state_dict(), head.state_dict()
    assert h0.keys() == h1.keys() and any(not torch.equal(h0[k], h1[k]) for k in h0)


def test_synthetic_components_are_instances(tmp_path):
    url = blob_run(str(tmp_path / "blobs"))
    found = synthetic_instances(RunReader(url), url, [1, 6])
    assert set(found) == {1, 6} and found[6] == []
    assert [(key, j, inst.area, inst.class_id) for key, j, inst in found[1]] == [
        ("toy-f0-c0001-text-00000", 0, 36, 1),
        ("toy-f0-c0001-text-00000", 2, 60, 1),
    ]
    assert found[1][1][2].bbox == [28.0, 30.0, 10.0, 6.0]
    with pytest.raises(ConfigError, match=r"finetune\.synthetic_runs.*blobs.*\[6, 11\]"):
        synthetic_instances(RunReader(url), url, [6, 11])


def test_finetune_counts_synthetic_instances(trained, tmp_path):
    tmp, _, _, _ = trained
    url = blob_run(str(tmp_path / "blobs"))
    cfg = parse_maskdiff_config(config(tmp, finetune={"synthetic_runs": [url], "detector_steps": 1, "head_steps": 1}))
    report = train_maskdiff_finetune(cfg, log=quiet)
    assert report["synthetic_samples"] == 1 and report["synthetic_instances"] == {"1": 2, "6": 0, "11": 0, "16": 0}
    kshot = json.loads((Path(cfg.finetune_dir()) / KSHOT_FILE).read_text())
    extra = [e for e in kshot["classes"]["1"] if "run" in e]
    assert extra == [{"run": url, "key": "toy-f0-c0001-text-00000", "component": j} for j in (0, 2)]
    assert len(kshot["classes"]["1"]) == SHOTS + 2 and len(kshot["classes"]["6"]) == SHOTS


def test_named_errors(trained, tmp_path):
    tmp, _, _, _ = trained
    fresh = parse_maskdiff_config(config(tmp_path))
    with pytest.raises(ConfigError, match="train the base stage first") as err:
        train_maskdiff_finetune(fresh, log=quiet)
    assert fresh.base_dir() in str(err.value)
    thirty = parse_maskdiff_config(config(tmp, finetune={"shots": 30}))
    for stage in (train_maskdiff_base, train_maskdiff_finetune):  # before any training, before the base check
        with pytest.raises(FsisError, match=r"class \d+ has \d+ non-crowd instance\(s\); a 30-shot"):
            stage(thirty, log=quiet)
    assert not Path(thirty.base_dir()).exists()
    pascal = blob_run(str(tmp_path / "pascal"), dataset="pascal")
    with pytest.raises(
        ConfigError, match=r"finetune\.synthetic_runs.*pascal.*dataset 'pascal'; expected a run of 'toy'"
    ):
        train_maskdiff_finetune(parse_maskdiff_config(config(tmp, finetune={"synthetic_runs": [pascal]})), log=quiet)
    other_fold = toy_run(str(tmp_path / "f3"), FOLD.novel, fold=3)
    with pytest.raises(ConfigError, match=r"finetune\.synthetic_runs: .*f3 is a run of toy fold 3; this config reads"):
        train_maskdiff_finetune(parse_maskdiff_config(config(tmp, finetune={"synthetic_runs": [other_fold]})))


def test_support_draws_and_lr_schedule():
    rng = np.random.default_rng(0)
    assert pick_supports(1, 0, 3, rng) == [0, 0, 0]
    assert sorted(pick_supports(3, 1, 2, rng)) == [0, 2]
    many = pick_supports(2, 0, 5, rng)
    assert many == [1] * 5
    draw = pick_supports(10, 4, 9, rng)
    assert sorted(draw) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    factor = detector_lr_factor(110_000)
    assert factor(0) == pytest.approx(0.001) and factor(1000) == 1.0
    assert factor(82_499) == 1.0 and factor(82_500) == pytest.approx(0.1) and factor(99_000) == pytest.approx(0.01)
    assert detector_lr_factor(4)(0) == 1.0  # short runs: no warm-up
