"""check_layout / format_report and build_dataset: exact counts per split, class and fold; problems are collected."""

import re

import numpy as np
import pytest
from fakes import make_coco, make_fss, make_pascal, truncate, write_jpeg, write_noise_jpeg, write_png

from maskforge.eval import folds
from maskforge.eval.datasets import build_dataset, check
from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.check import check_layout, format_report, sample_ids
from maskforge.eval.datasets.config import ToyConfig
from maskforge.eval.datasets.pascal import PascalDataset

SMALL_TOY = ToyConfig(n_train=8, n_val=4, image_size=32)


def _row(text: str, *cells: str) -> bool:
    """True when `text` has a table line made of exactly these cells (any spacing)."""
    pattern = r"^\s*" + r"\s+".join(re.escape(c) for c in cells) + r"\s*$"
    return re.search(pattern, text, flags=re.MULTILINE) is not None


def test_build_dataset_registry(tmp_path):
    assert isinstance(build_dataset("pascal", str(make_pascal(tmp_path))), PascalDataset)
    assert build_dataset("toy", None, SMALL_TOY).image_ids("val")[-1] == "val_000003"
    with pytest.raises(DatasetError, match="unknown dataset 'ade20k'; expected one of toy, pascal, coco, fss"):
        build_dataset("ade20k", "/data")
    with pytest.raises(DatasetError, match="toy: root must be empty"):
        build_dataset("toy", "/data")
    with pytest.raises(DatasetError, match="coco: a dataset root is required"):
        build_dataset("coco", None)


def test_sample_ids_is_deterministic_and_spread():
    ids = [f"i{k}" for k in range(10)]
    assert sample_ids(ids, 3) == ["i0", "i3", "i6"]
    assert sample_ids(ids, 20) == ids
    assert sample_ids([], 5) == [] and sample_ids(ids, 0) == []


def test_pascal_report_counts(tmp_path):
    report = check_layout("pascal", str(make_pascal(tmp_path)))
    assert report.problems == [] and report.ok
    assert report.split_images == {"train": 2, "val": 2}
    assert report.decoded == {"train": 2, "val": 2}
    assert {c: n for c, n in report.class_images["val"].items() if n} == {1: 1, 2: 1, 15: 1}
    assert {c: n for c, n in report.class_images["train"].items() if n} == {1: 1, 20: 1}
    assert report.empty_classes == [c for c in range(1, 21) if c not in (1, 2, 15, 20)]
    by_fold = {f.index: (f.novel_images, f.base_images) for f in report.folds}
    assert by_fold == {
        0: ({"train": 1, "val": 2}, {"train": 0, "val": 0}),
        1: ({"train": 0, "val": 0}, {"train": 1, "val": 2}),
        2: ({"train": 0, "val": 1}, {"train": 1, "val": 1}),
        3: ({"train": 1, "val": 0}, {"train": 0, "val": 2}),
    }
    assert report.folds[2].novel == (11, 12, 13, 14, 15) and len(report.folds[2].base) == 15

    text = format_report(report)
    assert "images per split: train 2 | val 2" in text
    assert _row(text, "1", "aeroplane", "1", "1")
    assert _row(text, "20", "tvmonitor", "1", "0")
    assert _row(text, "2", "11-15", "15", "0 / 1", "1 / 1")
    assert "fold 0 novel: 1 aeroplane, 2 bicycle, 3 bird, 4 boat, 5 bottle" in text
    assert text.rstrip().endswith("problems: none")


def test_pascal_problems_are_collected(tmp_path):
    voc = make_pascal(tmp_path)
    jpeg = write_noise_jpeg(voc / "JPEGImages" / "2007_000002.jpg", 18, 24)
    truncate(jpeg, keep=0.8)  # header intact: the index reads it, only a full decode fails
    write_png(voc / "SegmentationClassAug" / "2008_000004.png", np.zeros((3, 3), np.uint8))
    report = check_layout("pascal", str(voc))
    assert not report.ok
    assert report.split_images == {"train": 2, "val": 2}
    assert "train" not in report.class_images and report.class_images["val"][2] == 1
    assert any(p.startswith("train: ") and "2008_000004.png is 3x3" in p for p in report.problems)
    assert any(p.startswith("val: ") and "truncated image" in p and "2007_000002.jpg" in p for p in report.problems)
    assert report.decoded == {"train": 1, "val": 1}
    text = format_report(report)
    assert f"problems ({len(report.problems)}):" in text and "2007_000002.jpg" in text


def test_missing_root_is_a_problem_not_a_crash(tmp_path):
    report = check_layout("coco", str(tmp_path / "nope"))
    assert len(report.problems) == 1 and "does not exist" in report.problems[0]
    assert report.split_images == {} and report.folds == []
    assert "problems (1):" in format_report(report)


def test_usage_errors_raise():
    with pytest.raises(DatasetError, match="unknown dataset 'voc'"):
        check_layout("voc", "/data")
    with pytest.raises(folds.FoldError, match="fold mode must be one of"):
        check_layout("toy", None, fold_mode="random")


def test_coco_report_interleaved_and_contiguous(tmp_path):
    root = str(make_coco(tmp_path))
    report = check_layout("coco", root)
    assert report.problems == []
    assert report.split_images == {"train": 2, "val": 1} and report.decoded == {"train": 2, "val": 1}
    assert {c: n for c, n in report.class_images["train"].items() if n} == {1: 1, 17: 1, 80: 1}
    f0, f1 = report.folds[0], report.folds[1]
    assert f0.novel == tuple(range(1, 81, 4))
    assert (f0.novel_images, f0.base_images) == ({"train": 1, "val": 0}, {"train": 0, "val": 1})
    assert (f1.novel_images, f1.base_images) == ({"train": 0, "val": 1}, {"train": 1, "val": 0})
    assert "folds (interleaved)" in format_report(report)

    contiguous = check_layout("coco", root, fold_mode="contiguous")
    c0, c3 = contiguous.folds[0], contiguous.folds[3]
    assert c0.novel == tuple(range(1, 21))
    assert (c0.novel_images, c0.base_images) == ({"train": 1, "val": 1}, {"train": 0, "val": 0})
    assert (c3.novel_images, c3.base_images) == ({"train": 1, "val": 0}, {"train": 0, "val": 1})
    assert _row(format_report(contiguous), "3", "61-80", "60", "1 / 0", "0 / 1")


def test_toy_report_matches_its_index():
    report = check_layout("toy", None, toy=SMALL_TOY)
    assert report.problems == []
    assert report.split_images == {"train": 8, "val": 4} and report.decoded == {"train": 8, "val": 4}
    ds = build_dataset("toy", None, SMALL_TOY)
    assert report.class_images["val"] == {c: len(v) for c, v in ds.class_index("val").items()}
    assert [f.index for f in report.folds] == [0, 1, 2, 3]
    for f in report.folds:
        novel = {i for c in f.novel for i in ds.class_index("train")[c]}
        assert f.novel_images["train"] == len(novel)


def test_fss_report_full_size_table(tmp_path, monkeypatch):
    names = [f"c{i:04d}" for i in range(1000)]
    lists = {"trn": tuple(names[:520]), "val": tuple(names[520:760]), "test": tuple(names[760:])}
    monkeypatch.setattr(folds, "fss_split_names", lambda split: lists[split])
    make_fss(tmp_path, lists, images_per_class=1)
    report = check_layout("fss", str(tmp_path), sample=3)
    assert report.problems == []
    assert report.split_images == {"trn": 520, "val": 240, "test": 240, "train": 1000}
    assert report.decoded == {"trn": 3, "val": 3, "test": 3, "train": 3}
    assert report.class_images["train"] == {c: 1 for c in range(1, 1001)}
    assert report.class_images["test"][761] == 1 and report.class_images["test"][1] == 0
    (f,) = report.folds
    assert f.novel_images == {"trn": 0, "val": 0, "test": 240, "train": 240}
    assert f.base_images == {"trn": 520, "val": 0, "test": 0, "train": 520}
    assert _row(format_report(report), "0", "761-1000", "520", "0 / 520", "0 / 0", "240 / 0", "240 / 520")


def test_fss_without_split_lists_reports_how_to_fix(tmp_path, monkeypatch):
    def missing(split):
        raise folds.FoldError(f"fss: the class list of split {split!r} is not shipped with maskforge")

    monkeypatch.setattr(folds, "fss_split_names", missing)
    report = check_layout("fss", str(tmp_path))
    assert len(report.problems) == 1 and "not shipped" in report.problems[0]


def _truncated_jpeg(voc, image_id: str, width: int, height: int):
    """Overwrite one JPEG with a noise JPEG of the label's size cut to 80% (header readable, full decode fails)."""
    return truncate(write_noise_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", width, height), keep=0.8)


def _extra_train_images(voc, n: int) -> list[str]:
    """Add n background-only 16x16 train images 2010_000000.. (not in val.txt); return their ids."""
    ids = [f"2010_{k:06d}" for k in range(n)]
    for image_id in ids:
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", 16, 16)
        write_png(voc / "SegmentationClassAug" / f"{image_id}.png", np.zeros((16, 16), np.uint8))
    return ids


def test_default_check_decodes_every_image(tmp_path):
    voc = make_pascal(tmp_path)
    extra = _extra_train_images(voc, 30)  # train: 2008_000003, 2008_000004, 2010_000000..029 = 32 ids
    jpeg = _truncated_jpeg(voc, extra[-1], 16, 16)  # the last id: an evenly spaced sample of 20 (or 1) skips it
    assert "2010_000029" not in sample_ids(["2008_000003", "2008_000004", *extra], 20)
    report = check_layout("pascal", str(voc))
    assert report.sample is None
    assert report.split_images == {"train": 32, "val": 2}  # the index reads headers only: counts stay exact
    assert report.decoded == {"train": 31, "val": 2}
    assert len(report.problems) == 1
    (problem,) = report.problems
    assert problem.startswith("train: pascal: unreadable or truncated image ") and str(jpeg) in problem
    text = format_report(report)
    assert "decoded (all):    train 31 | val 2" in text
    assert "problems (1):" in text and f"  - {problem}" in text and "problems: none" not in text

    sampled = check_layout("pascal", str(voc), sample=20)
    assert sampled.sample == 20 and sampled.ok and sampled.problems == []
    assert sampled.decoded == {"train": 20, "val": 2} and sampled.split_images == {"train": 32, "val": 2}
    assert "decoded (sample of 20 per split): train 20 | val 2" in format_report(sampled)
    one = check_layout("pascal", str(voc), sample=1)  # train's 2008_000003 and val's 2007_000001 only
    assert one.ok and one.decoded == {"train": 1, "val": 1}


def test_every_bad_image_is_reported_and_the_list_is_capped(tmp_path, monkeypatch):
    voc = make_pascal(tmp_path)
    bad = {
        "2008_000003": _truncated_jpeg(voc, "2008_000003", 40, 32),
        "2008_000004": _truncated_jpeg(voc, "2008_000004", 16, 16),
        "2007_000002": _truncated_jpeg(voc, "2007_000002", 18, 24),
    }
    report = check_layout("pascal", str(voc))
    assert report.decoded == {"train": 0, "val": 1}
    assert len(report.problems) == 3
    for image_id, split in (("2008_000003", "train"), ("2008_000004", "train"), ("2007_000002", "val")):
        assert sum(p.startswith(f"{split}: ") and str(bad[image_id]) in p for p in report.problems) == 1

    extra = _extra_train_images(voc, 25)
    for image_id in extra:
        bad[image_id] = _truncated_jpeg(voc, image_id, 16, 16)
    capped = check_layout("pascal", str(voc))  # train: 27 bad images, 20 listed; val: 1 bad image
    assert capped.decoded == {"train": 0, "val": 1}
    assert len(capped.problems) == check.MAX_PROBLEMS_PER_SPLIT + 2 == 22
    train_ids = ["2008_000003", "2008_000004", *extra]
    for problem, image_id in zip(capped.problems[:20], train_ids[:20]):
        assert problem.startswith("train: ") and str(bad[image_id]) in problem
    assert capped.problems[20] == "train: (+7 more problems)"
    assert capped.problems[21].startswith("val: ") and str(bad["2007_000002"]) in capped.problems[21]
    assert not any(str(bad[i]) in p for i in train_ids[20:] for p in capped.problems)
    assert "problems (22):" in format_report(capped)

    monkeypatch.setattr(check, "MAX_PROBLEMS_PER_SPLIT", 1)
    assert check_layout("pascal", str(voc)).problems[1] == "train: (+26 more problems)"


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_val_list_is_a_problem_naming_the_file(tmp_path, content):
    voc = make_pascal(tmp_path)
    val_list = voc / "ImageSets" / "Segmentation" / "val.txt"
    val_list.write_text(content)
    report = check_layout("pascal", str(voc))
    assert not report.ok
    assert report.problems == [f"pascal: {val_list} lists no image ids; expected VOC's val list (one id per line)"]
    assert report.split_images == {} and report.decoded == {}
    assert f"  - pascal: {val_list} lists no image ids" in format_report(report)


def test_split_without_images_is_a_problem_naming_the_split(tmp_path):
    voc = make_pascal(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n2007_000002\n2008_000003\n2008_000004\n")
    report = check_layout("pascal", str(voc))
    assert report.problems == ["train: split 'train' has no images; expected at least one"]
    assert report.split_images == {"train": 0, "val": 4}
    assert report.decoded == {"train": 0, "val": 4}


@pytest.mark.parametrize("bad", [0, -3, True, 1.5])
def test_sample_below_one_is_a_usage_error(tmp_path, bad):
    with pytest.raises(DatasetError, match="sample must be a whole number >= 1"):
        check_layout("pascal", str(make_pascal(tmp_path)), sample=bad)
