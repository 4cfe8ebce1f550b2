"""GFSS stages on a tiny toy world: base stage, novel stage (finetune / gaps, ± a synthetic run), PIFS evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import toy_run

from maskforge.eval.datasets.base import DatasetError, ImageRecord
from maskforge.eval.folds import toy_fold
from maskforge.eval.gfss_protocol import ClassMap
from maskforge.models.gfss.checkpoint import load_gfss, save_gfss
from maskforge.models.gfss.network import GfssSpec, build_gfss, masked_average_pool
from maskforge.storage.results import append_results, read_results
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.gfss.base import base_image_ids, open_fold, train_gfss_base
from maskforge.tasks.gfss.config import parse_gfss_config
from maskforge.tasks.gfss.evaluate import benchmark_rows, eval_gfss, score_checkpoint, trend_markdown
from maskforge.tasks.gfss.feed import NovelData, NovelFeed, normalize
from maskforge.tasks.gfss.novel import class_vectors, load_base, replay_buffer, train_gfss_novel

TOY = {"seed": 0, "image_size": 48, "n_train": 80, "n_val": 6}
FOLD = toy_fold(0)


def config(tmp: Path, **sections) -> dict:
    """A tiny GFSS config: 48 px toy world, tiny net, a few steps everywhere."""
    data = {
        "run": {"name": "t", "out_dir": str(tmp / "runs"), "device": "cpu", "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": TOY},
        "model": {"backbone": "tiny", "aspp_channels": 16, "aspp_rates": [1, 2, 3], "tiny_width": 4},
        "base": {"steps": 3, "batch_size": 4, "crop_size": 48, "log_every": 1},
        "novel": {"runs": 1, "iterations": 2, "batch_size": 4, "workers": 0, "buffer_size": 12, "buffer_images": 30},
        "eval": {"max_images": 3, "results_dir": str(tmp / "results")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def synthetic_run(url: str, classes=FOLD.novel, dataset="toy", fold=0, source="text", toy=TOY) -> str:
    """Write a complete maskforge-format run of object-centric toy samples (2 per class) with a dataset section."""
    return toy_run(url, classes, 2, dataset, fold, toy, source, size=40, max_count=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base model of the tiny config (trained once for the module)."""
    tmp = tmp_path_factory.mktemp("gfss")
    cfg = parse_gfss_config(config(tmp))
    report = train_gfss_base(cfg, log=lambda m: None)
    return tmp, cfg, report


def test_base_stage_trains_on_a_leakage_free_set_and_is_not_retrained(trained):
    tmp, cfg, report = trained
    dataset, fold = open_fold(cfg)
    ids = base_image_ids(dataset, "train", fold)
    assert report["base_images"] == len(ids) and 0 < len(ids) < TOY["n_train"]
    for image_id in ids:  # not a single novel pixel
        assert not set(dataset.load(image_id).class_ids) & set(fold.novel)
    net, meta = load_gfss(report["checkpoint"])
    assert net.spec.num_classes == 1 + len(FOLD.base) == 13
    assert meta["config"]["base"]["steps"] == 3 and meta["extra"]["stage"] == "base"
    again = train_gfss_base(cfg, log=lambda m: None)
    assert again["checkpoint"] == report["checkpoint"] and again["seconds"] == report["seconds"]


@pytest.mark.parametrize("method", ["finetune", "gaps"])
def test_novel_stage_and_evaluation(trained, method):
    tmp, _, base = trained
    syn = synthetic_run(str(tmp / f"syn-{method}"))
    cfg = parse_gfss_config(config(tmp, novel={"method": method, "synthetic_runs": [syn]}))
    report = train_gfss_novel(cfg, log=lambda m: None)
    assert report["setting"] == f"{method}+synthetic"
    assert report["task_stream"] == [[1], [6], [11], [16]]
    (run,) = report["runs"]
    assert all(len(ids) == 1 for ids in run["shots"].values())  # 1-shot, one image per novel class
    for s, step in enumerate(run["steps"]):
        net, meta = load_gfss(step["checkpoint"])
        assert net.spec.num_classes == 13 + s + 1  # one class learned per step
        assert meta["extra"]["class_map"]["novel"] == [1, 6, 11, 16][: s + 1]
    assert (report["buffer_images"] > 0) == (method == "gaps")
    result = eval_gfss(cfg, log=lambda m: None)
    assert result["images"] == 3 and len(result["runs"][0]["steps"]) == 4
    s = result["summary"]
    for key in ("base_miou", "novel_miou", "hm", "base_miou_last", "hm_last"):
        assert 0.0 <= s[key] <= 1.0
    (row,) = benchmark_rows(cfg, result)
    assert row["protocol"] == "gfss-pifs" and row["model"] == f"gfss-{method}" and row["runs"] == 1
    assert row["metrics"]["hm"] == pytest.approx(s["hm"]) and row["synthetic_source"] == syn


def test_feed_labels(trained):
    tmp, cfg, _ = trained
    class_map = ClassMap(tuple(FOLD.base), (1,))
    dataset, _ = open_fold(cfg)
    shot = dataset.class_index("train")[1][0]
    common = dict(
        dataset=cfg.dataset, fold_novel=FOLD.novel, class_map=class_map, step_classes=(1,),
        shots={1: [shot]}, crop=48, scale=(0.5, 2.0), paste_scale=(0.1, 2.0), seed=0,
    )  # fmt: skip
    ft = iter(NovelFeed(NovelData(method="finetune", **common)))
    for _ in range(4):  # a real shot's annotation: its class (model id 13) and background; ignore from padding
        image, label = next(ft)
        assert image.shape == (3, 48, 48) and set(label.unique().tolist()) <= {-1, 0, 13}
    buffer = base_image_ids(dataset, "train", FOLD)[:5]
    gaps = iter(NovelFeed(NovelData(method="gaps", buffer=buffer, p_vrfs=1.0, **common)))
    seen = set()
    for _ in range(6):
        _, label = next(gaps)
        seen |= set(label.unique().tolist())
    assert 13 in seen and seen - {-1, 0, 13}  # the pasted class on base images with their base labels


def test_eval_refuses_an_image_whose_mask_size_differs(trained):
    net = build_gfss(GfssSpec("tiny", 13, aspp_channels=16, aspp_rates=(1, 2, 3))).eval()
    bad = ImageRecord("val_000001", np.zeros((48, 48, 3), np.uint8), np.zeros((40, 48), np.int32))
    with pytest.raises(DatasetError, match="val_000001.*differs"):
        score_checkpoint(net, ClassMap(tuple(FOLD.base), ()), FOLD.novel, [bad], torch.device("cpu"))


def test_bad_inputs_are_named(trained, tmp_path):
    tmp, _, base = trained
    bad_classes = str(tmp_path / "five.safetensors")
    save_gfss(bad_classes, build_gfss(GfssSpec("tiny", 5, aspp_channels=16, aspp_rates=(1, 2, 3))), {})
    with pytest.raises(ConfigError, match=r"five.safetensors: the base checkpoint has 5 classes.*needs 13"):
        train_gfss_novel(parse_gfss_config(config(tmp, base={"checkpoint": bad_classes})), log=lambda m: None)
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="synthetic_runs.*nope"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [missing]})), log=lambda m: None)
    (tmp_path / "partial").mkdir()
    with pytest.raises(ConfigError, match="partial.*incomplete"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [str(tmp_path / "partial")]})))
    other_fold = synthetic_run(str(tmp_path / "f1"), fold=1)
    with pytest.raises(ConfigError, match="f1 is a run of toy fold 1; this config reads toy fold 0"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [other_fold]})))
    other_world = synthetic_run(str(tmp_path / "w1"), toy={**TOY, "seed": 1})
    with pytest.raises(ConfigError, match="w1 renders another toy world"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [other_world]})))
    more_images = synthetic_run(str(tmp_path / "n"), toy={**TOY, "n_train": 500}, classes=(1,))
    with pytest.raises(ConfigError, match="n holds no generated sample of class 6"):  # same world: checked further
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [more_images]})))
    lacking = synthetic_run(str(tmp_path / "lack"), classes=(1, 6))
    with pytest.raises(ConfigError, match=r"lack holds no generated sample of class 11; it holds \{1: 2, 6: 2\}"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [lacking]})))
    real_only = synthetic_run(str(tmp_path / "real"), source="real")
    with pytest.raises(ConfigError, match="no generated sample of class 1"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"synthetic_runs": [real_only]})))
    with pytest.raises(ValueError, match=r"class 1 \(red disc\).*50 shots"):
        train_gfss_novel(parse_gfss_config(config(tmp, novel={"shots": 50})), log=lambda m: None)
    with pytest.raises(ConfigError, match="novel stage of this config has not completed"):
        eval_gfss(parse_gfss_config(config(tmp, novel={"iterations": 7})))
    assert not list(Path(tmp / "results").glob("*.parquet")) if (tmp / "results").exists() else True


def test_config_is_validated_before_work(tmp_path):
    with pytest.raises(ConfigError, match="base.scale"):
        parse_gfss_config(config(tmp_path, base={"scale": [2.0, 1.0]}))
    with pytest.raises(ConfigError, match="fss"):
        parse_gfss_config({**config(tmp_path), "dataset": {"name": "fss", "root": "/x"}})
    with pytest.raises(ConfigError, match="novel.method"):
        parse_gfss_config(config(tmp_path, novel={"method": "pifs"}))
    with pytest.raises(ConfigError, match="model.weights must be empty"):
        parse_gfss_config(config(tmp_path, model={"weights": "/w.pth"}))
    with pytest.raises(ConfigError, match="base.checkpoint is set"):
        train_gfss_base(parse_gfss_config(config(tmp_path, base={"checkpoint": "/x.pt"})))
    a = parse_gfss_config(config(tmp_path))
    b = parse_gfss_config(config(tmp_path, novel={"workers": 3}))
    c = parse_gfss_config(config(tmp_path, novel={"method": "finetune"}))
    assert a.novel_dir() == b.novel_dir() != c.novel_dir() and a.base_dir() == c.base_dir()


def test_trend_lists_gfss_rows(tmp_path):
    cfg = parse_gfss_config(config(tmp_path))
    folder = str(tmp_path / "results")

    def result(setting: str, hm: float) -> dict:
        summary = {k: 0.5 for k in ("base_miou", "novel_miou", "base_miou_last", "novel_miou_last", "hm_last")}
        summary = {**summary, "hm": hm, **{f"{k}_std": 0.0 for k in (*summary, "hm")}}
        return {
            "method": setting.split("+")[0], "backbone": "tiny", "checkpoint": "b.safetensors", "dataset": "toy",
            "fold": 0, "split": "val", "shots": 1, "setting": setting, "synthetic_runs": [], "images": 6,
            "runs": [{}, {}], "summary": summary, "class_iou_last": {"0": 0.9},
        }  # fmt: skip

    append_results(folder, benchmark_rows(cfg, result("gaps", 0.40)))
    append_results(folder, benchmark_rows(cfg, result("gaps", 0.45)) + benchmark_rows(cfg, result("finetune", 0.2)))
    text = trend_markdown(read_results(folder), "toy", 0, 1)
    assert text.startswith("# GFSS trend: toy fold 0, 1-shot")
    gaps = text.split("## gaps\n")[1]
    assert "| 2 | 50.00 | 50.00 | 40.00 |  |" in gaps and "| 2 | 50.00 | 50.00 | 45.00 | +5.00 |" in gaps
    assert "## finetune" in text and "20.00" in text.split("## gaps")[0]
    assert trend_markdown(read_results(folder), "toy", 1, 1).count("|") == 0  # other folds are other trends


def test_imprinting_sets_the_new_row_to_the_shots_mean_prototype(trained):
    tmp, cfg, base = trained
    net, _ = load_gfss(base["checkpoint"])
    dataset, _ = open_fold(cfg)
    shots = dataset.class_index("train")[6][:2]
    vectors = class_vectors(net, dataset, shots, 6, torch.device("cpu"))
    by_hand = []
    for image_id in shots:  # masked average pool of the features over the class's pixels, then L2-normalised
        record = dataset.load(image_id)
        pooled = masked_average_pool(net.features(normalize([record.image])), torch.from_numpy(record.label == 6)[None])
        by_hand.append(torch.nn.functional.normalize(pooled, dim=1)[0])
    torch.testing.assert_close(vectors, torch.stack(by_hand))
    prototype = torch.nn.functional.normalize(vectors.mean(0, keepdim=True), dim=1)
    head = net.head.expanded(14, prototype)
    weights = head.pixel_classifier.class_mat.weight.detach().flatten(1)
    torch.testing.assert_close(weights[:13], net.head.pixel_classifier.class_mat.weight.detach().flatten(1))
    torch.testing.assert_close(weights[13], prototype[0])
    # a feature equal to the prototype scores the new class at the head's scale (cosine 1)
    logits = head(prototype[0].view(1, -1, 1, 1))
    assert float(logits[0, 13, 0, 0].detach()) == pytest.approx(10.0, abs=1e-4)


def test_a_base_checkpoint_of_another_backbone_is_refused(trained):
    tmp, _, base = trained
    cfg = parse_gfss_config(config(tmp, model={"backbone": "resnet101"}, base={"checkpoint": base["checkpoint"]}))
    with pytest.raises(ConfigError, match="holds a tiny backbone; model.backbone says 'resnet101'"):
        train_gfss_novel(cfg, log=lambda m: None)


def test_the_replay_buffer_depends_on_the_weights_not_the_output_folder(trained, tmp_path):
    tmp, cfg, base = trained
    other = parse_gfss_config(config(tmp_path))  # the same config written elsewhere: same weights, other metadata
    moved = train_gfss_base(other, log=lambda m: None)
    first, ckpt = load_base(cfg, FOLD)
    second, moved_ckpt = load_base(other, FOLD)
    assert moved_ckpt != ckpt and moved["checkpoint"] == moved_ckpt
    dataset, _ = open_fold(cfg)
    device = torch.device("cpu")
    a = replay_buffer(cfg, first, ckpt, dataset, FOLD, device, log=lambda m: None)
    b = replay_buffer(other, second, moved_ckpt, dataset, FOLD, device, log=lambda m: None)
    assert a == b and len(a) == 12  # novel.buffer_size of the tiny config
    assert not set(a) & {i for c in FOLD.novel for i in dataset.class_index("train")[c]}  # base images only
