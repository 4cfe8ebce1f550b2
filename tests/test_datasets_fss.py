"""FssDataset on a miniature FSS-1000 (lists patched in), the shipped lists' contract, the derived trn/val split."""

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from fakes import FSS_SPLITS, fss_mask, make_fss, truncate, write_jpeg, write_png

from maskforge.eval import folds
from maskforge.eval.datasets import build_dataset, forget_datasets, open_dataset
from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.config import DatasetConfig
from maskforge.eval.datasets.fss import FssDataset

MINI_SIZES = {s: len(v) for s, v in FSS_SPLITS.items()}  # 3 trn, 2 val, 2 test
MINI_NON_TEST = ("ant", "bee", "cat_toy", "dog_bowl", "egg")

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


@pytest.fixture
def mini_test_only(monkeypatch):
    """Only the miniature test list exists (trn/val unreadable), with the miniature split sizes."""

    def names(split):
        if split != "test":
            raise AssertionError(f"the derived split must not read the {split} list")
        return FSS_SPLITS["test"]

    monkeypatch.setattr(folds, "fss_split_names", names)
    monkeypatch.setattr(folds, "FSS_SPLIT_SIZES", MINI_SIZES)


@pytest.fixture
def shipped_test_only(tmp_path, monkeypatch):
    """eval/splits/fss/ as shipped without HSNet's lists: only test.txt (the miniature one), miniature sizes."""
    split_dir = tmp_path / "package" / "splits" / "fss"
    split_dir.mkdir(parents=True)
    (split_dir / "test.txt").write_text("".join(f"{n}\n" for n in FSS_SPLITS["test"]))
    monkeypatch.setattr(folds.resources, "files", lambda package: tmp_path / "package")
    monkeypatch.setattr(folds, "FSS_SPLIT_SIZES", MINI_SIZES)
    return make_fss(tmp_path / "fss")


def test_class_ids_follow_sorted_split_order(root):
    ds = FssDataset(root)
    assert ds.trainval_source == "lists"
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


def test_derive_fss_trainval_full_size_is_seeded_disjoint_and_covers_the_names():
    names = [f"c{i:03d}" for i in range(760)]
    trn, val = folds.derive_fss_trainval(names[::-1], 520, 0)  # input order does not matter
    assert (len(trn), len(val)) == (520, 240)
    assert not set(trn) & set(val) and set(trn) | set(val) == set(names)
    assert list(trn) == sorted(trn) and list(val) == sorted(val)
    assert trn[:4] == ("c001", "c002", "c003", "c005") and val[:4] == ("c000", "c004", "c007", "c009")
    assert folds.derive_fss_trainval(names, 520, 0) == (trn, val)
    assert folds.derive_fss_trainval(names, 520, 1)[1][:4] == ("c000", "c002", "c003", "c009")


def test_derive_fss_trainval_refuses_bad_input():
    with pytest.raises(folds.FoldError, match=r"duplicates \(3 names\)"):
        folds.derive_fss_trainval(["a", "b", "a"], 1)
    with pytest.raises(folds.FoldError, match="cannot draw 4 trn classes from 3 names"):
        folds.derive_fss_trainval(["a", "b", "c"], 4)


def test_fss_splits_derived_needs_the_folders_and_a_known_source(mini_test_only):
    with pytest.raises(folds.FoldError, match="needs the class-folder names found on disk"):
        folds.fss_splits("derived")
    with pytest.raises(folds.FoldError, match="needs 5 non-test class folders, got 4"):
        folds.fss_splits("derived", MINI_NON_TEST[:4] + FSS_SPLITS["test"])
    with pytest.raises(folds.FoldError, match=r"must be one of \['lists', 'derived'\], got 'random'"):
        folds.fss_splits("random")
    assert folds.fss_trainval_source(None) == folds.fss_trainval_source("lists") == "lists"
    assert folds.fss_trainval_source("derived") == "derived:0"


def test_derived_split_on_the_mini_fake(tmp_path, mini_test_only):
    root = make_fss(tmp_path)
    ds = FssDataset(root, "derived")
    assert ds.trainval_source == "derived:0"
    trn, val = folds.derive_fss_trainval(MINI_NON_TEST, 3, folds.FSS_TRAINVAL_SEED)
    assert (trn, val) == (("ant", "bee", "dog_bowl"), ("cat_toy", "egg"))
    assert ds.classes() == {
        1: "ant", 2: "bee", 3: "dog_bowl", 4: "cat_toy", 5: "egg", 6: "abe's_flyingfish", 7: "fan",
    }  # fmt: skip
    assert ds.image_ids("trn") == ["ant/1", "ant/2", "bee/1", "bee/2", "dog_bowl/1", "dog_bowl/2"]
    assert ds.image_ids("val") == ["cat_toy/1", "cat_toy/2", "egg/1", "egg/2"]
    assert ds.image_ids("test") == ["abe's_flyingfish/1", "abe's_flyingfish/2", "fan/1", "fan/2"]
    assert FssDataset(root, "derived").classes() == ds.classes()  # deterministic


def test_derived_split_needs_exactly_the_full_set_of_class_folders(tmp_path, mini_test_only):
    root = make_fss(tmp_path)
    write_jpeg(root / "giraffe" / "1.jpg", 4, 4)
    with pytest.raises(DatasetError, match=f"exactly 7 class folders in {root}, .*found 8 class folders, 2 of them"):
        FssDataset(root, "derived")
    for p in (root / "fan").iterdir():
        p.unlink()
    (root / "fan").rmdir()  # 7 folders again, but one test class missing
    with pytest.raises(DatasetError, match=f"derived needs exactly 7 class folders in {root}, .*found 7 .*1 of them"):
        FssDataset(root, "derived")


def test_derived_split_full_size_with_the_shipped_test_list(tmp_path):
    test = folds.fss_split_names("test")
    others = [f"zz_class_{i:03d}" for i in range(760)]
    root = make_fss(tmp_path, {"test": test, "rest": tuple(others)}, images_per_class=1)
    ds = FssDataset(root, "derived")
    trn, val = folds.derive_fss_trainval(others, 520, folds.FSS_TRAINVAL_SEED)
    classes = ds.classes()
    assert len(classes) == 1000 and [classes[c] for c in range(761, 1001)] == sorted(test)
    assert [classes[c] for c in range(1, 521)] == list(trn) and [classes[c] for c in range(521, 761)] == list(val)
    assert {s: len(ds.image_ids(s)) for s in ds.splits()} == {"trn": 520, "val": 240, "test": 240, "train": 1000}
    fold = folds.get_fold("fss", 0)
    assert {classes[c] for c in fold.novel} == set(test) and {classes[c] for c in fold.base} == set(trn)
    (root / "zz_class_000" / "1.jpg").unlink()
    (root / "zz_class_000" / "1.png").unlink()
    (root / "zz_class_000").rmdir()
    with pytest.raises(DatasetError, match=f"exactly 1000 class folders in {root}, .*found 999 class folders, 240"):
        FssDataset(root, "derived")


def test_default_without_lists_errors_with_a_hint(shipped_test_only):
    with pytest.raises(DatasetError) as err:
        FssDataset(shipped_test_only)
    msg = str(err.value)
    assert "cannot build the class table: fss: the class list of split 'trn' is not shipped" in msg
    assert "copy HSNet's data/splits/fss/trn.txt and val.txt" in msg
    assert "set dataset.fss_trainval: derived" in msg
    with pytest.raises(DatasetError, match="dataset.fss_trainval: derived"):
        FssDataset(shipped_test_only, "lists")
    derived = FssDataset(shipped_test_only, "derived")
    assert derived.trainval_source == "derived:0"
    assert derived.image_ids("val") == ["cat_toy/1", "cat_toy/2", "egg/1", "egg/2"]


def test_missing_test_list_error_has_no_trainval_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(folds.resources, "files", lambda package: tmp_path)
    with pytest.raises(folds.FoldError) as err:
        folds.fss_split_names("test")
    assert "not shipped" in str(err.value) and "fss_trainval" not in str(err.value)
    with pytest.raises(folds.FoldError, match="or set dataset.fss_trainval: derived"):
        folds.fss_split_names("val")


def test_unknown_trainval_source_is_a_dataset_error(root):
    with pytest.raises(DatasetError, match="trn/val source must be one of .*got 'random'"):
        FssDataset(root, "random")


def test_build_dataset_passes_the_trainval_source(tmp_path, mini_test_only):
    root = make_fss(tmp_path)
    ds = build_dataset("fss", str(root), fss_trainval="derived")
    assert isinstance(ds, FssDataset) and ds.trainval_source == "derived:0"
    with pytest.raises(DatasetError, match="toy: fss_trainval applies to FSS-1000 only"):
        build_dataset("toy", None, fss_trainval="derived")


def test_open_dataset_keys_on_the_trainval_source(tmp_path, monkeypatch):
    monkeypatch.setattr(folds, "fss_split_names", lambda split: FSS_SPLITS[split])
    monkeypatch.setattr(folds, "FSS_SPLIT_SIZES", MINI_SIZES)
    root = str(make_fss(tmp_path))
    forget_datasets()
    try:
        default = open_dataset(DatasetConfig(name="fss", root=root))
        lists = open_dataset(DatasetConfig(name="fss", root=root, fss_trainval="lists"))
        derived = open_dataset(DatasetConfig(name="fss", root=root, fss_trainval="derived"))
        assert default is lists and derived is not lists
        assert (lists.trainval_source, derived.trainval_source) == ("lists", "derived:0")
        assert lists.class_id("cat_toy") == 3 and derived.class_id("cat_toy") == 4
        assert open_dataset(DatasetConfig(name="fss", root=root, fss_trainval="derived")) is derived
    finally:
        forget_datasets()


def test_trainval_option_on_another_dataset_is_a_config_error():
    with pytest.raises(ValueError, match=r"dataset.fss_trainval applies to FSS-1000 only .*remove it for 'pascal'"):
        DatasetConfig(name="pascal", root="/voc", fss_trainval="derived")
    with pytest.raises(ValueError, match="dataset.fss_trainval applies to FSS-1000 only"):
        DatasetConfig(fss_trainval="lists")
    with pytest.raises(ValueError, match="fss_trainval"):
        DatasetConfig(name="fss", root="/fss", fss_trainval="random")


def test_datasets_check_reads_a_derived_split(tmp_path, mini_test_only):
    from typer.testing import CliRunner

    from maskforge.eval.datasets.check import check_layout
    from maskforge.flows.cli import app

    root = make_fss(tmp_path)
    report = check_layout("fss", str(root), fss_trainval="derived", sample=1)
    assert len(report.classes) == sum(len(v) for v in FSS_SPLITS.values())
    assert set(report.split_images) >= {"trn", "val", "test"}
    result = CliRunner().invoke(app, ["datasets", "check", str(root), "--dataset", "fss", "--fss-trainval", "derived"])
    assert "fss_trainval" not in result.output and "trn" in result.output
