"""CocoDataset on a tiny fake COCO 2014: class table, ids, painted label maps, JSON-only index, and bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import box, coco_categories, coco_spec, make_coco, rle, truncate, write_coco_json, write_jpeg

from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.coco import CocoDataset
from maskforge.eval.folds import COCO_CLASSES
from maskforge.storage.labels import IGNORE

A = "train2014/COCO_train2014_000000000001"
B = "train2014/COCO_train2014_000000000002"
C = "val2014/COCO_val2014_000000000003"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_coco(tmp_path)


def test_classes_are_ranks_of_category_ids(root):
    ds = CocoDataset(root)
    assert ds.classes() == {i + 1: n for i, n in enumerate(COCO_CLASSES)}
    assert ds.class_id("dog") == 17  # category id 18, rank 17
    assert ds.class_id("toothbrush") == 80  # category id 90
    with pytest.raises(DatasetError, match="unknown class name 'unicorn'"):
        ds.class_id("unicorn")


def test_splits_and_ids(root):
    ds = CocoDataset(root)
    assert ds.splits() == ("train", "val")
    assert ds.image_ids("train") == [A, B]
    assert ds.image_ids("val") == [C]
    assert all("." not in i for i in ds.image_ids("train"))
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        ds.image_ids("test")
    with pytest.raises(DatasetError, match="unknown image id 'train2014/nope'"):
        ds.load("train2014/nope")
    with pytest.raises(DatasetError, match="unknown image id 'x/y'"):
        ds.load("x/y")


def test_label_smaller_instance_wins_and_crowd_is_ignore(root):
    rec = CocoDataset(root).load(A)
    expected = np.zeros((32, 40), np.int32)
    expected[12:32, 25:40] = IGNORE  # toothbrush crowd
    expected[0:20, 0:20] = 1  # person polygon rows 0..19, cols 0..19
    expected[10:15, 10:30] = 17  # dog (area 100 < 400) wins over the person and over the crowd
    np.testing.assert_array_equal(rec.label, expected)
    assert rec.class_ids == (1, 17)
    assert rec.image.shape == (32, 40, 3) and rec.image.dtype == np.uint8


def test_unannotated_and_crowd_only_images(root):
    ds = CocoDataset(root)
    b = ds.load(B)
    np.testing.assert_array_equal(b.label, np.zeros((16, 16), np.int32))
    assert b.class_ids == ()
    c = ds.load(C)
    expected = np.zeros((20, 24), np.int32)
    expected[5:10, 0:6] = IGNORE
    np.testing.assert_array_equal(c.label, expected)
    assert c.class_ids == ()


def test_class_index_from_annotations(root):
    ds = CocoDataset(root)
    train = ds.class_index("train")
    assert set(train) == set(range(1, 81))
    # crowd toothbrush counts; the zero-area cat does not
    assert {c: ids for c, ids in train.items() if ids} == {1: [A], 17: [A], 80: [A]}
    val = ds.class_index("val")
    assert {c: ids for c, ids in val.items() if ids} == {2: [C]}


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        CocoDataset(tmp_path / "nope")


def test_missing_annotation_file(root):
    (root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DatasetError, match="missing file .*instances_val2014.json"):
        CocoDataset(root)


def test_missing_image_folder(root):
    for p in (root / "val2014").iterdir():
        p.unlink()
    (root / "val2014").rmdir()
    with pytest.raises(DatasetError, match=f"missing directory {root / 'val2014'}"):
        CocoDataset(root)


def test_invalid_json(root):
    (root / "annotations" / "instances_val2014.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read .*instances_val2014.json"):
        CocoDataset(root).image_ids("val")


def test_category_mismatch_names_the_file(root):
    cats = coco_categories()
    cats[16]["name"] = "kitten"  # rank 17: "dog"
    write_coco_json(root / "annotations" / "instances_train2014.json", coco_spec()["train"], cats)
    with pytest.raises(DatasetError, match=r"instances_train2014.json .* at rank 17 got 'kitten', expected 'dog'"):
        CocoDataset(root).image_ids("train")


def test_missing_category(root):
    write_coco_json(root / "annotations" / "instances_train2014.json", coco_spec()["train"], coco_categories()[:79])
    with pytest.raises(DatasetError, match="instances_train2014.json has 79 categories"):
        CocoDataset(root).class_index("train")


def test_unknown_category_id_in_annotation(root):
    spec = coco_spec()
    spec["train"]["annotations"][0]["category_id"] = 12  # an unused COCO id
    write_coco_json(root / "annotations" / "instances_train2014.json", spec["train"])
    with pytest.raises(DatasetError, match="annotation 101 has unknown category id 12"):
        CocoDataset(root).image_ids("train")


def test_annotation_without_image(root):
    spec = coco_spec()
    spec["val"]["annotations"][0]["image_id"] = 99
    write_coco_json(root / "annotations" / "instances_val2014.json", spec["val"])
    with pytest.raises(DatasetError, match="annotation 201 refers to image id 99"):
        CocoDataset(root).image_ids("val")


@pytest.mark.parametrize("key", ["iscrowd", "category_id", "image_id"])
def test_annotation_missing_field(root, key):
    spec = coco_spec()
    del spec["val"]["annotations"][0][key]
    write_coco_json(root / "annotations" / "instances_val2014.json", spec["val"])
    with pytest.raises(DatasetError, match=rf"instances_val2014.json: annotation 201 lacks \['{key}'\]"):
        CocoDataset(root).image_ids("val")


def test_image_entry_missing_field(root):
    spec = coco_spec()
    del spec["val"]["images"][0]["height"]
    write_coco_json(root / "annotations" / "instances_val2014.json", spec["val"])
    with pytest.raises(DatasetError, match=r"instances_val2014.json: image 3 lacks \['height'\]"):
        CocoDataset(root).image_ids("val")


def test_listed_image_missing_on_disk(root):
    (root / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(DatasetError, match="missing on disk, e.g. .*COCO_train2014_000000000002.jpg"):
        CocoDataset(root).image_ids("train")


def test_image_without_annotation_entry(root):
    write_jpeg(root / "val2014" / "COCO_val2014_000000000777.jpg", 8, 8)
    with pytest.raises(DatasetError, match="without annotation entry, e.g. .*COCO_val2014_000000000777.jpg"):
        CocoDataset(root).image_ids("val")


def test_dotted_file_name_is_rejected(root):
    spec = coco_spec()
    spec["val"]["images"][0]["file_name"] = "a.b.jpg"
    write_coco_json(root / "annotations" / "instances_val2014.json", spec["val"])
    with pytest.raises(DatasetError, match=r"file_name 'a.b.jpg'; expected '<stem>.jpg' \(no dots\)"):
        CocoDataset(root).image_ids("val")


def test_image_size_differs_from_annotation_size(root):
    write_jpeg(root / "train2014" / "COCO_train2014_000000000001.jpg", 41, 32)
    with pytest.raises(DatasetError, match=r"is 40x32 \(WxH\) but image .*COCO_train2014_000000000001.jpg is 41x32"):
        CocoDataset(root).load(A)


def test_rle_size_differs_from_image(root):
    spec = coco_spec()
    spec["train"]["annotations"][1]["segmentation"] = rle(box(31, 40, slice(0, 2), slice(0, 2)))
    write_coco_json(root / "annotations" / "instances_train2014.json", spec["train"])
    with pytest.raises(DatasetError, match=r"annotation 102 is 40x31 \(WxH\) but image .*000000000001.jpg is 40x32"):
        CocoDataset(root).load(A)


def test_undecodable_rle(root):
    spec = coco_spec()
    spec["train"]["annotations"][1]["segmentation"]["size"] = [31, 40]  # counts no longer fit the size
    write_coco_json(root / "annotations" / "instances_train2014.json", spec["train"])
    with pytest.raises(DatasetError, match="annotation 102 of .*000000000001.jpg: undecodable segmentation"):
        CocoDataset(root).load(A)


def test_truncated_image(root):
    truncate(root / "val2014" / "COCO_val2014_000000000003.jpg")
    with pytest.raises(DatasetError, match="unreadable or truncated image .*COCO_val2014_000000000003.jpg"):
        CocoDataset(root).load(C)


def test_json_is_read_once_per_split(root):
    ds = CocoDataset(root)
    ds.image_ids("val")
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps({"broken": True}))
    assert ds.image_ids("val") == [C]  # parsed data is kept on the instance
