"""COCO as GAPS reads it: COCO2017 with COCO-Stuff thing maps (or COCO2017 instances painted the same way), named by
dataset.coco_layout, validated by `datasets check`, the GFSS COCO config evaluating on val2017."""

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import coco_spec, write_coco_json, write_jpeg
from PIL import Image

from maskforge.eval.datasets import build_dataset
from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.check import check_layout, format_report
from maskforge.eval.datasets.coco_stuff import CocoStuffDataset, label_from_stuff_png
from maskforge.storage.labels import IGNORE
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.gfss.config import load_gfss_config, parse_gfss_config

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def make_stuff(tmp: Path, beside: bool) -> Path:
    """Two train and two val images of 12 x 16 px with thing maps (person, dog, toothbrush, stuff, unlabelled)."""
    maps = {
        "train": {"000000000001": (0, 17, 255), "000000000002": (0, 100, 100)},  # person, dog, unlabelled / stuff
        "val": {"000000000003": (89, 120, 0), "000000000004": (150, 150, 150)},  # toothbrush, stuff, person / stuff
    }
    for split, images in maps.items():
        for stem, (a, b, c) in images.items():
            write_jpeg(tmp / f"{split}2017" / f"{stem}.jpg", 16, 12)
            values = np.full((12, 16), a, np.uint8)
            values[4:8] = b
            values[8:] = c
            folder = tmp / f"{split}2017" if beside else tmp / "stuffthingmaps_trainval2017" / f"{split}2017"
            _png(folder / f"{stem}.png", values)
    return tmp


def test_thing_map_values_as_gaps_maps_them():
    values = np.array([[0, 1, 89, 91], [92, 181, 255, 16]], np.uint8)
    # category id = value + 1: 1 person -> 1, 2 bicycle -> 2, 90 toothbrush -> 80, 92..182 stuff -> 0, 17 cat -> 16
    assert label_from_stuff_png(values, Path("x.png")).tolist() == [[1, 2, 80, 0], [0, 0, IGNORE, 16]]
    with pytest.raises(DatasetError, match=r"x.png has pixels of COCO category ids \[12\], which COCO does not use"):
        label_from_stuff_png(np.array([[11]], np.uint8), Path("x.png"))
    with pytest.raises(DatasetError, match=r"category ids \[91\]"):  # 91 is unused too (GAPS's deleted_idx)
        label_from_stuff_png(np.array([[90]], np.uint8), Path("x.png"))


@pytest.mark.parametrize("beside", [True, False])
def test_the_stuffthingmaps_layout_beside_the_jpegs_or_as_downloaded(tmp_path, beside):
    ds = build_dataset("coco", str(make_stuff(tmp_path, beside)), coco_layout="stuffthingmaps2017")
    assert isinstance(ds, CocoStuffDataset) and ds.splits() == ("train", "val")
    assert ds.image_ids("val") == ["val2017/000000000003", "val2017/000000000004"]
    rec = ds.load("train2017/000000000001")
    assert rec.label.shape == (12, 16) and rec.image.shape == (12, 16, 3)
    assert rec.label[0, 0] == 1 and rec.label[5, 0] == 17 and rec.label[10, 0] == IGNORE  # dog: category 18 -> 17
    assert rec.class_ids == (1, 17)
    index = ds.class_index("val")
    assert index[80] == index[1] == ["val2017/000000000003"]  # the stuff-only image 4 indexes nothing
    assert not any("val2017/000000000004" in ids for ids in index.values())
    assert len(index) == 80
    with pytest.raises(DatasetError, match="unknown image id 'val2014/000000000003'"):
        ds.load("val2014/000000000003")


def test_a_jpeg_without_its_thing_map_is_named(tmp_path):
    root = make_stuff(tmp_path, beside=False)
    (root / "stuffthingmaps_trainval2017" / "val2017" / "000000000004.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) of .*val2017 have no thing-map PNG .* 000000000004.png"):
        build_dataset("coco", str(root), coco_layout="stuffthingmaps2017")
    with pytest.raises(DatasetError, match="coco_layout 'stuff'; expected one of instances2014, instances2017"):
        build_dataset("coco", str(root), coco_layout="stuff")


def test_datasets_check_validates_the_named_layout(tmp_path):
    root = make_stuff(tmp_path, beside=True)
    report = check_layout("coco", str(root), coco_layout="stuffthingmaps2017")
    assert report.problems == [] and report.split_images == {"train": 2, "val": 2} and report.decoded["val"] == 2
    assert "layout: stuffthingmaps2017" in format_report(report).splitlines()[0]
    wrong = check_layout("coco", str(root))  # the default instances2014 layout is not there
    assert wrong.layout == "instances2014" and "annotations" in wrong.problems[0]


def test_instances2017_paints_coco2017_instances_the_same_way(tmp_path):
    for split, part in coco_spec().items():
        part = json.loads(json.dumps(part).replace("2014", "2017"))
        write_coco_json(tmp_path / "annotations" / f"instances_{split}2017.json", part)
        for img in part["images"]:
            write_jpeg(tmp_path / f"{split}2017" / img["file_name"], img["width"], img["height"])
    ds = build_dataset("coco", str(tmp_path), coco_layout="instances2017")
    assert ds.image_ids("val") == ["val2017/COCO_val2017_000000000003"]
    assert ds.load("train2017/COCO_train2017_000000000001").class_ids == (1, 17)  # person, dog (smaller wins)
    assert check_layout("coco", str(tmp_path), coco_layout="instances2017").problems == []


def test_the_gfss_coco_config_names_gaps_layout_and_val2017(tmp_path):
    cfg = load_gfss_config(ROOT / "configs" / "gfss-coco.yaml")
    assert cfg.dataset.coco_layout == "stuffthingmaps2017" and cfg.eval.split == "val"
    assert cfg.dataset.root.endswith("coco2017")
    # a config without the field dumps without it (the hashes of other configs do not move)
    plain = parse_gfss_config({"dataset": {"name": "coco", "root": "/x"}})
    assert "coco_layout" not in plain.resolved()["dataset"]
    with pytest.raises(ConfigError, match="coco_layout applies to COCO only"):
        parse_gfss_config({"dataset": {"name": "toy", "coco_layout": "instances2017"}})
    with pytest.raises(ConfigError, match="coco_layout"):
        parse_gfss_config({"dataset": {"name": "coco", "root": "/x", "coco_layout": "instances2015"}})
    cfg = parse_gfss_config({"dataset": {"name": "coco", "root": str(make_stuff(tmp_path, True)), "coco_layout":
                                         "stuffthingmaps2017"}})  # fmt: skip
    from maskforge.eval.datasets import open_dataset

    assert open_dataset(cfg.dataset).image_ids("val")[0].startswith("val2017/")
