"""FssDataset on a miniature FSS-1000 (class lists patched in), and the shipped split lists' contract."""

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from fakes import FSS_SPLITS, fss_mask, make_fss, truncate, write_jpeg, write_png

from maskforge.eval import folds
from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.fss import FssDataset

SHIPPED = all(
    resources.files("maskforge.eval").joinpath("splits", "fss", f"{s}.txt").is_file() for s in ("trn", "val", "test")
)


@pytest.fixture
def mini_lists(monkeypatch):
    """Replace the shipped FSS lists by the miniature table of tests/fakes.py."""
    monkeypatch.setattr(folds, "fss_split_names", lambda split: FSS_SPLITS[split])


@pytest.fixture
def root(tmp_path: Path, mini_lists) -> Path:
    return make_fss(tmp_path)


def test_class_ids_follow_sorted_split_order(root):
    ds = FssDataset(root)
    assert ds.classes() == {
        1: "ant", 2: "bee", 3: "cat_toy", 4: "dog_bowl", 5: "egg", 6: "abe's_flyingfish", 7: "fan",
    }  # fmt: skip
    assert ds.class_id("egg") == 5
    with pytest.raises(DatasetError, match="unknown class name 'giraffe'"):
        ds.class_id("giraffe")


def test_splits_are_class_level(root):
    ds = FssDataset(root)
    assert ds.splits() == ("trn", "val", "test", "train")
    assert ds.image_ids("trn") == ["ant/1", "ant/2", "bee/1", "bee/2", "cat_toy/1", "cat_toy/2"]
    assert ds.image_ids("val") == ["dog_bowl/1", "dog_bowl/2", "egg/1", "egg/2"]
    assert ds.image_ids("test") == ["abe's_flyingfish/1", "abe's_flyingfish/2", "fan/1", "fan/2"]
    assert ds.image_ids("train") == sorted(ds.image_ids("trn") + ds.image_ids("val") + ds.image_ids("test"))
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        ds.image_ids("dev")


def test_mask_binarised_at_128(root):
    grey = np.array([[0, 127, 128, 255]] * 2, np.uint8)
    write_jpeg(root / "bee" / "2.jpg", 4, 2)
    write_png(root / "bee" / "2.png", grey)
    rec = FssDataset(root).load("bee/2")
    np.testing.assert_array_equal(rec.label, np.array([[0, 0, 2, 2]] * 2, np.int32))
    assert rec.class_ids == (2,)
    assert rec.image.shape == (2, 4, 3) and rec.image.dtype == np.uint8


def test_rgb_mask_is_read_as_grey(root):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[3:, :] = 255
    write_png(root / "fan" / "1.png", rgb, mode="RGB")
    label = FssDataset(root).load("fan/1").label
    expected = np.zeros((6, 8), np.int32)
    expected[3:, :] = 7
    np.testing.assert_array_equal(label, expected)


def test_empty_mask_has_no_class(root):
    rec = FssDataset(root).load("egg/2")
    assert rec.class_ids == () and not rec.label.any()


def test_class_index_reads_pixels_and_is_cached(root):
    ds = FssDataset(root)
    val = ds.class_index("val")
    assert set(val) == set(range(1, 8))
    assert {c: v for c, v in val.items() if v} == {4: ["dog_bowl/1", "dog_bowl/2"], 5: ["egg/1"]}
    train = ds.class_index("train")
    assert train[5] == ["egg/1"] and train[1] == ["ant/1", "ant/2"] and train[7] == ["fan/1", "fan/2"]
    assert ds.class_index("val") is val


def test_missing_root(tmp_path, mini_lists):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'} does not exist"):
        FssDataset(tmp_path / "nope")


def test_missing_class_folder(root):
    for p in (root / "fan").iterdir():
        p.unlink()
    (root / "fan").rmdir()
    with pytest.raises(DatasetError, match=f"missing class folder {root / 'fan'}"):
        FssDataset(root)


def test_unknown_class_folder(root):
    write_jpeg(root / "giraffe" / "1.jpg", 4, 4)
    with pytest.raises(DatasetError, match=r"unknown class folder\(s\) \['giraffe'\]"):
        FssDataset(root)


def test_image_without_mask(root):
    (root / "ant" / "2.png").unlink()
    with pytest.raises(DatasetError, match=f"image {root / 'ant' / '2.jpg'} has no mask"):
        FssDataset(root)


def test_mask_without_image(root):
    (root / "ant" / "1.jpg").unlink()
    with pytest.raises(DatasetError, match=f"mask {root / 'ant' / '1.png'} has no image"):
        FssDataset(root)


def test_unexpected_file(root):
    (root / "bee" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="unexpected file .*notes.txt"):
        FssDataset(root)


def test_mask_size_differs(root):
    write_png(root / "cat_toy" / "1.png", fss_mask(5, 8, slice(0, 2)))
    ds = FssDataset(root)
    with pytest.raises(DatasetError, match=r"cat_toy/1.png is 8x5 \(WxH\) but image .*cat_toy/1.jpg is 8x6"):
        ds.load("cat_toy/1")
    with pytest.raises(DatasetError, match="cat_toy/1.png is 8x5"):
        ds.class_index("trn")


def test_truncated_image(root):
    truncate(root / "dog_bowl" / "2.jpg")
    with pytest.raises(DatasetError, match="unreadable or truncated image .*dog_bowl/2.jpg"):
        FssDataset(root).load("dog_bowl/2")


def test_unknown_image_id(root):
    with pytest.raises(DatasetError, match="unknown image id 'ant/3'"):
        FssDataset(root).load("ant/3")


def test_missing_split_lists_are_a_dataset_error(tmp_path, monkeypatch):
    def missing(split):
        raise folds.FoldError(f"fss: the class list of split {split!r} is not shipped")

    monkeypatch.setattr(folds, "fss_split_names", missing)
    make_fss(tmp_path)
    with pytest.raises(DatasetError, match="cannot build the class table: fss: the class list of split 'trn'"):
        FssDataset(tmp_path)


@pytest.mark.skipif(SHIPPED, reason="the FSS-1000 split lists are shipped")
def test_unshipped_list_error_says_how_to_provide_one():
    with pytest.raises(folds.FoldError) as err:
        folds.fss_split_names("val")
    msg = str(err.value)
    assert "not shipped" in msg and "val.txt" in msg
    assert "data/splits/fss/trn.txt and val.txt" in msg and "520 / 240" in msg


def test_official_test_list_is_shipped():
    names = folds.fss_split_names("test")
    assert len(names) == len(set(names)) == 240
    assert names[:3] == ("bus", "hotel_slipper", "burj_al") and names[-1] == "tower_pisa"
    assert "abe's_flyingfish" in names


@pytest.mark.skipif(not SHIPPED, reason="the FSS-1000 split lists are not shipped (HSNet's trn/val not verified)")
def test_shipped_lists_sizes_unique_disjoint():
    lists = {s: folds.fss_split_names(s) for s in ("trn", "val", "test")}
    assert {s: len(v) for s, v in lists.items()} == {"trn": 520, "val": 240, "test": 240}
    assert all(len(set(v)) == len(v) for v in lists.values())
    assert not set(lists["trn"]) & set(lists["val"])
    assert not set(lists["trn"]) & set(lists["test"])
    assert not set(lists["val"]) & set(lists["test"])
    assert len(folds.fss_classes()) == 1000


def test_provided_list_is_read_and_checked(tmp_path, monkeypatch):
    split_dir = tmp_path / "splits" / "fss"
    split_dir.mkdir(parents=True)
    monkeypatch.setattr(folds.resources, "files", lambda package: tmp_path)
    (split_dir / "test.txt").write_text("".join(f"class_{i}\r\n" for i in range(240)))  # HSNet's test.txt is CRLF
    assert folds.fss_split_names("test") == tuple(f"class_{i}" for i in range(240))
    (split_dir / "val.txt").write_text("a\nb\na\n")
    with pytest.raises(folds.FoldError, match=r"val.txt has 3 names \(2 unique\); expected 240 unique"):
        folds.fss_split_names("val")
