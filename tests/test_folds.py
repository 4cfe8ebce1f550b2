"""Fold tables equal the reference tables (PASCAL-5i, COCO-20i interleaved and contiguous, toy)."""

import pytest

from maskforge.eval.folds import (
    COCO_CLASSES,
    PASCAL_CLASSES,
    TOY_CLASSES,
    FoldError,
    coco_fold,
    fss_fold,
    get_fold,
    pascal_fold,
    toy_fold,
)

# Reference: PASCAL-5i fold tables (HSNet / PFENet / GAPS), 1-based VOC ids.
PASCAL_REF = {
    0: "aeroplane bicycle bird boat bottle",
    1: "bus car cat chair cow",
    2: "diningtable dog horse motorbike person",
    3: "pottedplant sheep sofa train tvmonitor",
}
# Reference: COCO-20i interleaved folds (HSNet), names of each fold in id order.
COCO_INTERLEAVED_REF = {
    0: ["person", "airplane", "boat", "parking meter", "dog", "elephant", "backpack", "suitcase", "sports ball",
        "skateboard", "wine glass", "spoon", "sandwich", "hot dog", "chair", "dining table", "mouse", "microwave",
        "refrigerator", "scissors"],
    1: ["bicycle", "bus", "traffic light", "bench", "horse", "bear", "umbrella", "frisbee", "kite", "surfboard",
        "cup", "bowl", "orange", "pizza", "couch", "toilet", "remote", "oven", "book", "teddy bear"],
    2: ["car", "train", "fire hydrant", "bird", "sheep", "zebra", "handbag", "skis", "baseball bat",
        "tennis racket", "fork", "banana", "broccoli", "donut", "potted plant", "tv", "keyboard", "toaster",
        "clock", "hair drier"],
    3: ["motorcycle", "truck", "stop sign", "cat", "cow", "giraffe", "tie", "snowboard", "baseball glove",
        "bottle", "knife", "apple", "carrot", "cake", "bed", "laptop", "cell phone", "sink", "vase", "toothbrush"],
}  # fmt: skip
COCO_CONTIGUOUS_FIRST_LAST = {0: ("person", "cow"), 1: ("elephant", "bottle"), 2: ("wine glass", "bed"),
                              3: ("dining table", "toothbrush")}  # fmt: skip


@pytest.mark.parametrize("fold", range(4))
def test_pascal_folds_match_reference(fold):
    f = pascal_fold(fold)
    assert [PASCAL_CLASSES[c - 1] for c in f.novel] == PASCAL_REF[fold].split()
    assert sorted(f.novel + f.base) == list(range(1, 21))
    assert len(f.base) == 15


@pytest.mark.parametrize("fold", range(4))
def test_coco_interleaved_folds_match_reference(fold):
    f = coco_fold(fold, "interleaved")
    assert f.novel == tuple(range(fold + 1, 81, 4))
    assert [COCO_CLASSES[c - 1] for c in f.novel] == COCO_INTERLEAVED_REF[fold]
    assert sorted(f.novel + f.base) == list(range(1, 81))


@pytest.mark.parametrize("fold", range(4))
def test_coco_contiguous_folds(fold):
    f = coco_fold(fold, "contiguous")
    names = [COCO_CLASSES[c - 1] for c in f.novel]
    assert len(names) == 20
    assert (names[0], names[-1]) == COCO_CONTIGUOUS_FIRST_LAST[fold]


def test_novel_sets_partition_all_classes():
    for folds, n in ((lambda i: pascal_fold(i), 20), (lambda i: coco_fold(i), 80), (lambda i: toy_fold(i), 16)):
        union = [c for i in range(4) for c in folds(i).novel]
        assert sorted(union) == list(range(1, n + 1))


def test_toy_folds_are_latin_squares():
    for fold in range(4):
        names = [TOY_CLASSES[c - 1].split() for c in toy_fold(fold).novel]
        assert len({m for m, _ in names}) == 4 and len({s for _, s in names}) == 4
    assert len(TOY_CLASSES) >= 12


def test_bad_fold_and_dataset_errors():
    with pytest.raises(FoldError, match="fold must be in 0..3, got 4"):
        pascal_fold(4)
    with pytest.raises(FoldError, match="fold mode"):
        coco_fold(0, "random")
    with pytest.raises(FoldError, match="unknown dataset 'voc'"):
        get_fold("voc", 0)


def test_fss_fold_is_positional_and_the_same_for_either_trainval_source():
    f = get_fold("fss", 0)
    assert f == fss_fold(0)
    assert f.novel == tuple(range(761, 1001)) and f.base == tuple(range(1, 521))
    with pytest.raises(FoldError, match="fss: fold must be in 0..0, got 1"):
        get_fold("fss", 1)
