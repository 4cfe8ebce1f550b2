"""MaskDiff on TFA's benchmark: the VOC/non-VOC class split, trainval35k / minival image lists, TFA's seed files,
the config's split: tfa and COCO -> VOC's instance data, on a tiny on-disk COCO 2014 and VOC2012."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fakes import box, make_coco, rle, write_jpeg, write_png

from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.coco import CocoDataset
from maskforge.eval.datasets.coco_tfa import TfaCocoDataset, read_minival_ids
from maskforge.eval.datasets.coco_voc import VocInCocoDataset
from maskforge.eval.folds import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    PASCAL_CLASSES,
    VOC_TO_COCO,
    FoldError,
    class_split,
    coco_fold,
    tfa_split,
)
from maskforge.eval.fsis_protocol import FsisError, read_tfa_kshot, tfa_files_present, tfa_seed_file
from maskforge.models.maskdiff.detector import instances_to_target, labels_for
from maskforge.storage.labels import IGNORE
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff.config import TFA_FINETUNE_ITERS, load_maskdiff_config, parse_maskdiff_config
from maskforge.tasks.maskdiff.evaluate import benchmark_setting
from maskforge.tasks.maskdiff.preflight import kshot_set, open_fold
from maskforge.tasks.maskdiff.train import base_images

ROOT = Path(__file__).resolve().parents[1]
# COCO category ids used below: person 1, dog 18, cat 17, bottle 44 (VOC); truck 8, bench 15, umbrella 28 (not VOC)
PERSON, DOG, CAT, BOTTLE, TRUCK, BENCH, UMBRELLA = 1, 18, 17, 44, 8, 15, 28


def test_tfa_split_is_the_20_voc_classes_novel_and_60_base():
    fold = tfa_split()
    assert len(fold.novel) == 20 and len(fold.base) == 60 and not set(fold.novel) & set(fold.base)
    assert sorted(fold.novel + fold.base) == list(range(1, 81))
    assert {COCO_CLASSES[c - 1] for c in fold.novel} == {VOC_TO_COCO[name] for name in PASCAL_CLASSES}
    # TFA's own list, as COCO category ids (builtin_meta.py:225-246)
    assert sorted(COCO_CATEGORY_IDS[c - 1] for c in fold.novel) == [
        1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72
    ]  # fmt: skip
    assert len(set(COCO_CATEGORY_IDS)) == 80 and fold.index == 0
    assert class_split("coco", 2, "interleaved", "coco20i") == coco_fold(2)  # COCO-20i folds stay a named option
    assert class_split("coco", 0, "interleaved", "tfa") == fold
    with pytest.raises(FoldError, match="class split 'tfa' is TFA's COCO split; dataset 'toy' has none"):
        class_split("toy", 0, "interleaved", "tfa")


def ann(ann_id: int, image_id: int, category: int, mask: np.ndarray, crowd: int = 0) -> dict:
    """A COCO annotation of a boolean mask (RLE), its box from the mask's extent."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    bbox = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
    return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": crowd,
            "area": float(mask.sum()), "segmentation": rle(mask), "bbox": bbox}  # fmt: skip


def image(coco_id: int, split: str) -> dict:
    """A 24 x 24 COCO image entry."""
    return {"id": coco_id, "file_name": f"COCO_{split}2014_{coco_id:012d}.jpg", "height": 24, "width": 24}


def spec() -> dict:
    """train2014: 3 images, val2014: 3 (10 and 12 are minival); VOC and non-VOC classes mixed in images 1 and 11."""
    m = lambda r, c: box(24, 24, slice(*r), slice(*c))  # noqa: E731
    train = {
        "images": [image(1, "train"), image(2, "train"), image(3, "train")],
        "annotations": [
            ann(101, 1, PERSON, m((0, 10), (0, 10))), ann(102, 1, DOG, m((12, 20), (12, 20))),
            ann(103, 1, BENCH, m((0, 6), (14, 24))), ann(104, 2, BENCH, m((2, 12), (2, 12))),
            ann(105, 2, UMBRELLA, m((14, 22), (0, 10))), ann(106, 3, TRUCK, m((4, 18), (4, 18))),
            ann(107, 3, DOG, m((0, 3), (0, 3))),
        ],
    }  # fmt: skip
    val = {
        "images": [image(10, "val"), image(11, "val"), image(12, "val")],
        "annotations": [
            ann(201, 10, TRUCK, m((0, 10), (0, 10))), ann(202, 10, CAT, m((12, 20), (12, 20))),
            ann(203, 11, BENCH, m((0, 8), (0, 8))), ann(204, 11, BOTTLE, m((10, 20), (10, 14))),
            ann(205, 12, UMBRELLA, m((4, 16), (4, 16))),
        ],
    }  # fmt: skip
    return {"train": train, "val": val}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """The tiny COCO 2014 layout with annotations/instances_minival2014.json (images 10 and 12)."""
    root = make_coco(tmp_path_factory.mktemp("coco"), spec())
    minival = {"images": [image(10, "val"), image(12, "val")], "annotations": [], "categories": []}
    (root / "annotations" / "instances_minival2014.json").write_text(json.dumps(minival))
    return root


def tfa_config(root: Path, **more) -> dict:
    """A split-tfa MaskDiff config on `root` with the tiny detector (nothing is trained here)."""
    data = yaml.safe_load((ROOT / "configs" / "maskdiff-tfa.yaml").read_text())
    data["dataset"]["root"] = str(root)
    data["detector"] = {"backbone": "tiny", "weights": None, "min_size": 32, "max_size": 32}
    data["head"] = {**data["head"], "arch": "tiny", "size": 32}
    for section, values in more.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    return data


def test_image_lists_trainval35k_and_minival(coco_root):
    tfa = TfaCocoDataset(CocoDataset(coco_root), read_minival_ids(coco_root, "instances_minival2014"))
    assert tfa.splits() == ("trainval35k", "minival")
    assert tfa.image_ids("minival") == ["val2014/COCO_val2014_000000000010", "val2014/COCO_val2014_000000000012"]
    assert tfa.image_ids("trainval35k") == sorted(
        [f"train2014/COCO_train2014_{i:012d}" for i in (1, 2, 3)] + ["val2014/COCO_val2014_000000000011"]
    )
    index = tfa.class_index("trainval35k")
    assert index[COCO_CATEGORY_IDS.index(BOTTLE) + 1] == ["val2014/COCO_val2014_000000000011"]
    assert index[COCO_CATEGORY_IDS.index(CAT) + 1] == []  # the only cat is in minival
    assert tfa.coco_image_id("val2014/COCO_val2014_000000000011") == 11
    # val2017's file lists the same 5k images under the same ids: the config names which file
    (coco_root / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": [{"id": 12}, {"id": 10}]}))
    assert read_minival_ids(coco_root, "val2017") == read_minival_ids(coco_root, "instances_minival2014")
    dataset, fold = open_fold(parse_maskdiff_config(tfa_config(coco_root, tfa={"minival": "val2017"})), "minival", "e")
    assert dataset.image_ids("minival") == tfa.image_ids("minival") and fold == tfa_split()


def test_a_missing_minival_file_says_what_to_add(tmp_path):
    root = make_coco(tmp_path / "coco", spec())
    with pytest.raises(DatasetError, match=r"instances_minival2014.json not found; .* or set tfa.minival: val2017"):
        read_minival_ids(root, "instances_minival2014")


def test_no_voc_class_in_the_base_training_labels(coco_root):
    """What base training sees of trainval35k: only base-class instances (VOC objects are not targets), and images
    whose only objects are VOC classes are not base-training images."""
    cfg = parse_maskdiff_config(tfa_config(coco_root))
    dataset, fold = open_fold(cfg, cfg.base.split, "base.split")
    novel = set(fold.novel)
    groups = base_images(dataset, cfg.base.split, sorted(fold.base))
    assert groups and all(ref.class_id not in novel for refs in groups for ref in refs)
    labels = labels_for(sorted(fold.base))
    for refs in groups:
        target = instances_to_target([dataset.load_instances(r.image)[r.index] for r in refs], labels)
        assert {sorted(fold.base)[int(t) - 1] for t in target["labels"]} <= set(fold.base)
    seen = {refs[0].image for refs in groups}
    # image 1 (person, dog, bench) trains its bench only; image 11 (bench, bottle) its bench; no minival image
    assert seen == {
        "train2014/COCO_train2014_000000000001", "train2014/COCO_train2014_000000000002",
        "train2014/COCO_train2014_000000000003", "val2014/COCO_val2014_000000000011",
    }  # fmt: skip
    first = next(refs for refs in groups if refs[0].image.endswith("000000000001"))
    assert [r.class_id for r in first] == [COCO_CATEGORY_IDS.index(BENCH) + 1]


def write_seed_file(path: Path, anns: list[dict], images: list[dict]) -> None:
    """One of TFA's K-shot files: a COCO instances JSON of a class's K annotations and their images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))


def test_tfa_seed_files_give_the_kshot_set(coco_root, tmp_path):
    seed_dir = tmp_path / "cocosplit"
    bench, bottle = COCO_CATEGORY_IDS.index(BENCH) + 1, COCO_CATEGORY_IDS.index(BOTTLE) + 1
    names = {bench: "bench", bottle: "bottle"}
    assert tfa_seed_file(seed_dir, 1, 0, "dining table") == seed_dir / "full_box_1shot_dining table_trainval.json"
    assert tfa_seed_file(seed_dir, 1, 3, "bench") == seed_dir / "seed3" / "full_box_1shot_bench_trainval.json"
    assert not tfa_files_present(seed_dir, names, 1, 3)
    write_seed_file(tfa_seed_file(seed_dir, 1, 3, "bench"), [{"id": 104, "image_id": 2, "category_id": BENCH}],
                    [image(2, "train")])  # fmt: skip
    with pytest.raises(FsisError, match=r"1 of 2 1-shot files of data seed 3 are missing, e\.g\. .*bottle"):
        tfa_files_present(seed_dir, names, 1, 3)
    write_seed_file(tfa_seed_file(seed_dir, 1, 3, "bottle"), [{"id": 204, "image_id": 11, "category_id": BOTTLE}],
                    [image(11, "val")])  # fmt: skip
    assert tfa_files_present(seed_dir, names, 1, 3)
    cfg = parse_maskdiff_config(tfa_config(coco_root))
    dataset, _ = open_fold(cfg, cfg.base.split, "base.split")
    shots = read_tfa_kshot(dataset, seed_dir, names, 1, 3)
    # image 2's instances: bench (104), umbrella (105); image 11's: bench (203), bottle (204)
    assert [(s.image_id, s.index) for s in shots[bench]] == [("train2014/COCO_train2014_000000000002", 0)]
    assert [(s.image_id, s.index) for s in shots[bottle]] == [("val2014/COCO_val2014_000000000011", 1)]
    write_seed_file(tfa_seed_file(seed_dir, 1, 3, "bottle"), [{"id": 203, "image_id": 11, "category_id": CAT}],
                    [image(11, "val")])  # fmt: skip
    with pytest.raises(FsisError, match="has category 17, not 'bottle'"):
        read_tfa_kshot(dataset, seed_dir, names, 1, 3)
    write_seed_file(tfa_seed_file(seed_dir, 1, 3, "bottle"), [{"id": 203, "image_id": 11, "category_id": BOTTLE}],
                    [image(11, "val")])  # fmt: skip
    with pytest.raises(FsisError, match="annotation 203 of COCO_val2014_000000000011.jpg is a class 14 instance"):
        read_tfa_kshot(dataset, seed_dir, names, 1, 3)
    write_seed_file(tfa_seed_file(seed_dir, 1, 3, "bottle"), [{"id": 204, "image_id": 10, "category_id": BOTTLE}],
                    [image(10, "val")])  # fmt: skip
    with pytest.raises(FsisError, match="COCO_val2014_000000000010.jpg is not in trainval35k"):
        read_tfa_kshot(dataset, seed_dir, names, 1, 3)


def test_kshot_source_follows_the_seed_files_and_names_the_stage(coco_root, tmp_path):
    seed_dir = tmp_path / "cocosplit"
    cfg = parse_maskdiff_config(tfa_config(coco_root, tfa={"seed_dir": str(seed_dir)}))
    assert cfg.kshot_source() == "maskforge-draw" and cfg.seed_dir() == str(seed_dir)
    drawn = cfg.finetune_dir()
    for i, name in enumerate(COCO_CLASSES):  # every class's file present (contents are read only by kshot_set)
        write_seed_file(tfa_seed_file(seed_dir, 5, 0, name), [], [])
    assert cfg.kshot_source() == "tfa-files" and cfg.finetune_dir() != drawn  # a new stage, not the drawn one reused
    with pytest.raises(FsisError, match="0 annotation"):
        kshot_set(cfg, *open_fold(cfg, cfg.base.split, "base.split"))
    required = parse_maskdiff_config(tfa_config(coco_root, tfa={"kshot": "tfa-files", "seed_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match=r"tfa\.kshot: tfa-files, but TFA's 5-shot seed files of data seed 0"):
        kshot_set(required, *open_fold(required, required.base.split, "base.split"))
    result = {"synthetic_runs": [], "class_split": "tfa", "kshot_source": "tfa-files"}
    assert benchmark_setting(result) == "tfa K-shot (tfa-files)"
    assert benchmark_setting({"synthetic_runs": [], "class_split": "coco20i", "kshot_source": "x"}) == "K-shot"


def test_config_split_tfa(coco_root):
    cfg = load_maskdiff_config(ROOT / "configs" / "maskdiff-tfa.yaml")
    assert (cfg.split, cfg.base.split, cfg.eval.split, cfg.tfa.minival) == (
        "tfa", "trainval35k", "minival", "instances_minival2014"
    )  # fmt: skip
    assert cfg.finetune.detector_iters() == TFA_FINETUNE_ITERS[5] == 80000 and cfg.base.head_batch_size == 8
    assert cfg.seed_dir() == "/data/coco2014/cocosplit"
    toy = load_maskdiff_config(ROOT / "configs" / "maskdiff-toy.yaml")
    data = toy.resolved()  # the new fields at their defaults are not dumped: stage names and hashes unchanged
    assert "split" not in data and "tfa" not in data and "schedule" not in data["finetune"]
    assert "head_batch_size" not in data["base"] and "voc_root" not in data["eval"]
    assert toy.finetune.detector_iters() == toy.finetune.detector_steps
    bad = [
        ({"dataset": {"fold": 1}}, "split tfa has no fold axis: dataset.fold must be 0, got 1"),
        ({"base": {"split": "train"}}, "split tfa trains on trainval35k and evaluates on minival"),
        ({"eval": {"split": "voc2012-val"}}, "needs split: tfa .* and eval.voc_root"),
        ({"split": "coco20i", "tfa": {"minival": "val2017"}}, "the tfa section applies to split: tfa only"),
    ]
    for more, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_maskdiff_config(tfa_config(coco_root, **more))


def make_voc(root: Path, with_objects: bool = True) -> Path:
    """A one-image VOC2012: a person (VOC 15) and a sofa (VOC 18) instance, boundary pixels 255."""
    voc = root / "VOC2012"
    write_jpeg(voc / "JPEGImages" / "2007_000001.jpg", 16, 12)
    objects = np.zeros((12, 16), np.uint8)
    classes = np.zeros((12, 16), np.uint8)
    objects[1:5, 1:6], classes[1:5, 1:6] = 1, 15
    objects[6:11, 8:15], classes[6:11, 8:15] = 2, 18
    objects[5, :], classes[5, :] = 255, 255
    if with_objects:
        write_png(voc / "SegmentationObject" / "2007_000001.png", objects, "P")
    write_png(voc / "SegmentationClass" / "2007_000001.png", classes, "P")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    return root


def test_voc_instances_in_coco_ids(tmp_path):
    voc = VocInCocoDataset(make_voc(tmp_path))
    record = voc.load("2007_000001")
    person, couch = COCO_CLASSES.index("person") + 1, COCO_CLASSES.index("couch") + 1
    assert [(i.class_id, i.area) for i in record.instances] == [(person, 20), (couch, 35)]
    assert set(np.unique(record.label).tolist()) == {0, person, couch, IGNORE} and len(voc.classes()) == 80
    assert voc.class_index("voc2012-val")[couch] == ["2007_000001"]


def test_missing_voc_instance_masks_are_one_clear_error(tmp_path):
    with pytest.raises(DatasetError) as err:
        VocInCocoDataset(make_voc(tmp_path, with_objects=False))
    assert "SegmentationObject not found; COCO -> VOC evaluation needs VOC2012's instance masks" in str(err.value)
    assert "VOCtrainval_11-May-2012.tar" in str(err.value) and "\n" not in str(err.value)


def test_tfa_finetune_schedule_and_head_batch():
    """schedule tfa: TFA's iterations for K, 10 warm-up steps, lr x0.1 from 90 %; fixed: constant (no scheduler)."""
    import torch

    from maskforge.tasks.maskdiff.schedules import kshot_lr_factor, kshot_lr_schedule

    factor = kshot_lr_factor(TFA_FINETUNE_ITERS[1])
    assert TFA_FINETUNE_ITERS == {1: 16000, 2: 32000, 3: 48000, 5: 80000, 10: 160000, 30: 240000}
    assert factor(0) == pytest.approx(0.001) and factor(5) == pytest.approx(0.5005) and factor(10) == 1.0
    assert factor(14399) == 1.0 and factor(14400) == 0.1 and factor(15999) == 0.1
    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.001)
    tfa = load_maskdiff_config(ROOT / "configs" / "maskdiff-tfa.yaml", {"finetune.shots": 10})
    assert tfa.finetune.detector_iters() == 160000 and kshot_lr_schedule(optimiser, tfa.finetune) is not None
    toy = load_maskdiff_config(ROOT / "configs" / "maskdiff-toy.yaml")
    assert kshot_lr_schedule(optimiser, toy.finetune) is None and toy.base.head_batch_size is None
