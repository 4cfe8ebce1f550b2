"""PascalDataset on a tiny fake VOC2012 layout: splits, exact label maps, class index, and every bad input."""

import re
from pathlib import Path

import numpy as np
import pytest
from fakes import make_pascal, pascal_labels, truncate, write_jpeg, write_png

from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.pascal import PascalDataset
from maskforge.eval.folds import PASCAL_CLASSES
from maskforge.storage.labels import IGNORE


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_pascal(tmp_path)


def test_root_is_voc_folder_or_its_parent(tmp_path):
    voc = make_pascal(tmp_path)
    assert PascalDataset(voc).root == voc
    assert PascalDataset(tmp_path).root == voc


def test_classes_and_splits(voc):
    ds = PascalDataset(voc)
    assert ds.classes() == {i + 1: n for i, n in enumerate(PASCAL_CLASSES)}
    assert ds.classes()[20] == "tvmonitor"
    assert ds.splits() == ("train", "val")
    assert ds.image_ids("val") == ["2007_000001", "2007_000002"]
    # train = every Aug label not in val; the JPEG without a label is in no split
    assert ds.image_ids("train") == ["2008_000003", "2008_000004"]


def test_label_maps_are_exact(voc):
    ds = PascalDataset(voc)
    for image_id, raw in pascal_labels().items():
        rec = ds.load(image_id)
        expected = raw.astype(np.int32)
        expected[raw == 255] = IGNORE
        assert rec.image_id == image_id
        assert rec.label.dtype == np.int32
        np.testing.assert_array_equal(rec.label, expected)
        assert rec.image.dtype == np.uint8 and rec.image.shape == (*raw.shape, 3)
    assert ds.load("2007_000001").class_ids == (1, 15)
    assert ds.load("2008_000003").class_ids == (1, 20)
    assert ds.load("2008_000004").class_ids == ()
    # flat-colour JPEG decodes close to its colour
    assert np.abs(ds.load("2007_000002").image.astype(int) - (120, 60, 200)).max() <= 6


def test_palette_label_png_reads_indices(voc):
    raw = pascal_labels()["2007_000002"]
    write_png(voc / "SegmentationClassAug" / "2007_000002.png", raw, mode="P")
    np.testing.assert_array_equal(PascalDataset(voc).load("2007_000002").label, raw.astype(np.int32))


def test_greyscale_jpeg_becomes_rgb(voc):
    write_jpeg(voc / "JPEGImages" / "2007_000002.jpg", 18, 24, (90, 90, 90), mode="L")
    img = PascalDataset(voc).load("2007_000002").image
    assert img.shape == (24, 18, 3) and img.dtype == np.uint8


def test_class_index_is_exact_and_cached(voc):
    ds = PascalDataset(voc)
    val = ds.class_index("val")
    assert set(val) == set(range(1, 21))
    assert {c: ids for c, ids in val.items() if ids} == {1: ["2007_000001"], 2: ["2007_000002"], 15: ["2007_000001"]}
    train = ds.class_index("train")
    assert {c: ids for c, ids in train.items() if ids} == {1: ["2008_000003"], 20: ["2008_000003"]}
    (voc / "SegmentationClassAug" / "2008_000003.png").unlink()  # a cached index does not read again
    assert ds.class_index("train") is train


def test_unknown_split_id_and_class(voc):
    ds = PascalDataset(voc)
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        ds.image_ids("test")
    with pytest.raises(DatasetError, match="unknown image id '2009_000005'"):
        ds.load("2009_000005")
    assert ds.class_id("cat") == 8 and ds.class_id(8) == 8
    with pytest.raises(DatasetError, match="unknown class name 'unicorn'"):
        ds.class_id("unicorn")
    with pytest.raises(DatasetError, match="unknown class id 21"):
        ds.class_id(21)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'}.*does not exist"):
        PascalDataset(tmp_path / "nope")


def test_root_without_voc_layout(tmp_path):
    with pytest.raises(DatasetError, match="neither JPEGImages/ nor VOC2012/"):
        PascalDataset(tmp_path)


def test_missing_aug_folder(voc):
    for p in (voc / "SegmentationClassAug").iterdir():
        p.unlink()
    (voc / "SegmentationClassAug").rmdir()
    with pytest.raises(DatasetError, match=f"missing directory {voc / 'SegmentationClassAug'}"):
        PascalDataset(voc)


def test_missing_val_list(voc):
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="missing file .*val.txt"):
        PascalDataset(voc)


@pytest.mark.parametrize("content", ["", "\n \n"])
def test_empty_val_list(voc, content):
    val_list = voc / "ImageSets" / "Segmentation" / "val.txt"
    val_list.write_text(content)
    with pytest.raises(DatasetError, match=re.escape(f"{val_list} lists no image ids")):
        PascalDataset(voc)


def test_val_image_without_mask(voc):
    (voc / "SegmentationClassAug" / "2007_000002.png").unlink()
    with pytest.raises(DatasetError, match=r"2007_000002.jpg \(in val.txt\) has no mask"):
        PascalDataset(voc)


def test_val_id_without_image(voc):
    (voc / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(DatasetError, match="2007_000001.png"):  # the label is now an orphan
        PascalDataset(voc)


def test_val_list_names_absent_image(voc):
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2010_999999\n")
    with pytest.raises(DatasetError, match="lists '2010_999999' but .*2010_999999.jpg is missing"):
        PascalDataset(voc)


def test_mask_without_image(voc):
    write_png(voc / "SegmentationClassAug" / "2011_000007.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"label PNG\(s\) without an image, e.g. .*2011_000007.png"):
        PascalDataset(voc)


def test_mask_size_differs_from_image(voc):
    write_png(voc / "SegmentationClassAug" / "2007_000002.png", np.zeros((10, 10), np.uint8))
    ds = PascalDataset(voc)
    with pytest.raises(DatasetError, match=r"2007_000002.png is 10x10 \(WxH\) but image .*2007_000002.jpg is 18x24"):
        ds.load("2007_000002")
    with pytest.raises(DatasetError, match="2007_000002.png is 10x10"):
        ds.class_index("val")


def test_truncated_image(voc):
    truncate(voc / "JPEGImages" / "2008_000003.jpg")
    with pytest.raises(DatasetError, match="unreadable or truncated image .*2008_000003.jpg"):
        PascalDataset(voc).load("2008_000003")


def test_garbage_label_png(voc):
    (voc / "SegmentationClassAug" / "2008_000004.png").write_bytes(b"not a png")
    ds = PascalDataset(voc)
    with pytest.raises(DatasetError, match="2008_000004.png"):
        ds.load("2008_000004")
    with pytest.raises(DatasetError, match="2008_000004.png"):
        ds.class_index("train")


def test_label_value_out_of_range(voc):
    bad = pascal_labels()["2008_000003"].copy()
    bad[0, 0] = 42
    write_png(voc / "SegmentationClassAug" / "2008_000003.png", bad)
    ds = PascalDataset(voc)
    with pytest.raises(DatasetError, match=r"2008_000003.png has values \[42\]; expected 0..20 or 255"):
        ds.load("2008_000003")
    with pytest.raises(DatasetError, match=r"2008_000003.png has values \[42\]"):
        ds.class_index("train")


def test_rgb_label_png_is_rejected(voc):
    write_png(voc / "SegmentationClassAug" / "2008_000004.png", np.zeros((16, 16, 3), np.uint8), mode="RGB")
    with pytest.raises(DatasetError, match="2008_000004.png has mode RGB; expected a single-channel"):
        PascalDataset(voc).load("2008_000004")
