"""Fold tables of the few-shot segmentation benchmarks: which classes are novel and which are base per fold."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from maskforge.eval.seeds import rng_for

PASCAL_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

#: COCO's 80 thing classes in category-id order; contiguous id = position + 1.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

#: COCO's category id of each of the 80 thing classes, in COCO_CLASSES order (the ids skip 12, 26, 29, 30, 45, 66,
#: 68, 69, 71, 83): contiguous id i + 1 is category id COCO_CATEGORY_IDS[i].
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

#: TFA's novel COCO classes, the 20 PASCAL VOC categories, as COCO category ids
#: (ucbdrive/few-shot-object-detection 148a039, fsdet/data/builtin_meta.py:225-246, COCO_NOVEL_CATEGORIES).
TFA_NOVEL_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72,
)  # fmt: skip

#: PASCAL VOC class name -> the COCO class name of the same category (VOC's names where COCO's differ).
VOC_TO_COCO: dict[str, str] = {
    **{name: name for name in PASCAL_CLASSES},
    "aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
    "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv",
}  # fmt: skip

#: MaskDiff's class splits of COCO: COCO-20i's four folds, or TFA's one split (VOC classes novel; no fold axis).
CLASS_SPLITS: tuple[str, ...] = ("coco20i", "tfa")

#: Toy world: class id = 1 + 4 * shape index + material index (16 classes).
TOY_SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "star")
TOY_MATERIALS: tuple[str, ...] = ("red", "green", "blue", "yellow")
TOY_CLASSES: tuple[str, ...] = tuple(f"{m} {s}" for s in TOY_SHAPES for m in TOY_MATERIALS)

FSS_SPLIT_SIZES = {"trn": 520, "val": 240, "test": 240}
#: Where FSS-1000's trn/val class lists come from (dataset.fss_trainval): HSNet's lists copied into
#: eval/splits/fss/, or a seeded split of the non-test class folders found on disk.
FSS_TRAINVAL_SOURCES: tuple[str, ...] = ("lists", "derived")
#: Fixed seed of the derived trn/val split (recorded as "derived:<seed>"), so every run derives the same split.
FSS_TRAINVAL_SEED = 0


class FoldError(ValueError):
    """An unknown dataset, fold or fold mode."""


@dataclass(frozen=True)
class Fold:
    """One benchmark fold: novel classes (few-shot targets) and base classes (fully labelled)."""

    dataset: str
    index: int
    novel: tuple[int, ...]
    base: tuple[int, ...]


def _check_fold(dataset: str, fold: int, n_folds: int) -> None:
    if not 0 <= fold < n_folds:
        raise FoldError(f"{dataset}: fold must be in 0..{n_folds - 1}, got {fold}")


def pascal_fold(fold: int) -> Fold:
    """PASCAL-5i: fold i's novel classes are 5i+1..5i+5 (1-based VOC ids); the other 15 are base."""
    _check_fold("pascal", fold, 4)
    novel = tuple(range(5 * fold + 1, 5 * fold + 6))
    return Fold("pascal", fold, novel, tuple(c for c in range(1, 21) if c not in novel))


def coco_fold(fold: int, mode: str = "interleaved") -> Fold:
    """COCO-20i: interleaved fold i = {i+1, i+5, ..., i+77} (HSNet); contiguous fold i = 20i+1..20i+20."""
    _check_fold("coco", fold, 4)
    if mode == "interleaved":
        novel = tuple(range(fold + 1, 81, 4))
    elif mode == "contiguous":
        novel = tuple(range(20 * fold + 1, 20 * fold + 21))
    else:
        raise FoldError(f"coco: fold mode must be 'interleaved' or 'contiguous', got {mode!r}")
    return Fold("coco", fold, novel, tuple(c for c in range(1, 81) if c not in novel))


def coco_contiguous_id(category_id: int) -> int:
    """Return the contiguous class id (1..80) of a COCO category id; an unknown one is a FoldError."""
    try:
        return COCO_CATEGORY_IDS.index(int(category_id)) + 1
    except ValueError:
        raise FoldError(f"coco: unknown category id {category_id}; expected one of COCO's 80 thing ids") from None


def tfa_split() -> Fold:
    """TFA's COCO split (MaskDiff's benchmark): the 20 PASCAL VOC classes novel, the other 60 base. It has no fold
    axis; the Fold's index is 0 and rows say "tfa" in their setting."""
    novel = tuple(sorted(coco_contiguous_id(c) for c in TFA_NOVEL_CATEGORY_IDS))
    return Fold("coco", 0, novel, tuple(c for c in range(1, 81) if c not in novel))


def class_split(dataset: str, fold: int, coco_mode: str = "interleaved", split: str = "coco20i") -> Fold:
    """Return the base/novel table a learner trains on: get_fold's folds, or with split "tfa" (COCO only) TFA's
    single split; an unknown split, or "tfa" on another dataset, is a FoldError."""
    if split not in CLASS_SPLITS:
        raise FoldError(f"class split must be one of {list(CLASS_SPLITS)}, got {split!r}")
    if split == "tfa":
        if dataset != "coco":
            raise FoldError(f"class split 'tfa' is TFA's COCO split; dataset {dataset!r} has none")
        return tfa_split()
    return get_fold(dataset, fold, coco_mode)


def toy_fold(fold: int) -> Fold:
    """Toy: fold f's novel classes form a Latin square, {(shape s, material (s+f) mod 4)}.

    Every shape and every material occurs in exactly one novel class, so each novel class is a new
    combination of parts the base classes show.
    """
    _check_fold("toy", fold, 4)
    n = len(TOY_MATERIALS)
    novel = tuple(1 + s * n + (s + fold) % n for s in range(len(TOY_SHAPES)))
    return Fold("toy", fold, novel, tuple(c for c in range(1, len(TOY_CLASSES) + 1) if c not in novel))


def fss_split_names(split: str) -> tuple[str, ...]:
    """Return the class-folder names of an FSS-1000 split ("trn", "val" or "test"), as shipped with maskforge."""
    if split not in FSS_SPLIT_SIZES:
        raise FoldError(f"fss: split must be one of {sorted(FSS_SPLIT_SIZES)}, got {split!r}")
    path = resources.files("maskforge.eval").joinpath("splits", "fss", f"{split}.txt")
    if not path.is_file():
        # HSNet's trn/val lists were drawn at random by its authors and could not be verified, so none is shipped
        # rather than an invented one; only the user can supply the exact files.
        hint = (
            "; or set dataset.fss_trainval: derived for a seeded 520 / 240 split of the 760 non-test class folders "
            "on disk (maskforge's own split, not HSNet's)"
            if split in ("trn", "val")
            else ""
        )
        raise FoldError(
            f"fss: the class list of split {split!r} is not shipped with maskforge (missing {path}); to use FSS-1000, "
            "copy HSNet's data/splits/fss/trn.txt and val.txt (520 / 240 class-folder names, one per line) into "
            f"{path.parent}/ (test.txt, FSS-1000's official test set, is shipped){hint}"
        )
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) != FSS_SPLIT_SIZES[split] or len(set(names)) != len(names):
        raise FoldError(
            f"fss: {path} has {len(names)} names ({len(set(names))} unique); expected {FSS_SPLIT_SIZES[split]} "
            "unique class-folder names, one per line"
        )
    return names


def derive_fss_trainval(
    names: Sequence[str], n_trn: int, seed: int = FSS_TRAINVAL_SEED
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split class names into (trn, val), each sorted: a seeded permutation of the sorted names; the first n_trn trn."""
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise FoldError(f"fss: the names to split into trn/val hold duplicates ({len(ordered)} names)")
    if not 0 <= n_trn <= len(ordered):
        raise FoldError(f"fss: cannot draw {n_trn} trn classes from {len(ordered)} names")
    order = rng_for("fss-trainval", seed).permutation(len(ordered))
    trn = tuple(sorted(ordered[i] for i in order[:n_trn]))
    val = tuple(sorted(ordered[i] for i in order[n_trn:]))
    return trn, val


def fss_trainval_source(trainval: str | None = None) -> str:
    """Return the provenance of FSS-1000's trn/val lists: "lists" (HSNet's files) or "derived:<seed>"."""
    trainval = trainval or "lists"
    if trainval not in FSS_TRAINVAL_SOURCES:
        raise FoldError(f"fss: trn/val source must be one of {list(FSS_TRAINVAL_SOURCES)}, got {trainval!r}")
    return "lists" if trainval == "lists" else f"derived:{FSS_TRAINVAL_SEED}"


def fss_splits(trainval: str | None = None, folders: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Return FSS-1000's {trn, val, test} class lists: trn/val shipped ("lists") or derived from `folders` on disk."""
    # "derived": every folder not in the shipped test list is split by derive_fss_trainval with FSS_TRAINVAL_SEED.
    if fss_trainval_source(trainval) == "lists":
        return {split: fss_split_names(split) for split in ("trn", "val", "test")}
    if folders is None:
        raise FoldError("fss: the derived trn/val split needs the class-folder names found on disk")
    test = fss_split_names("test")
    rest = sorted(set(folders) - set(test))
    n_trn, n_val = FSS_SPLIT_SIZES["trn"], FSS_SPLIT_SIZES["val"]
    if len(rest) != n_trn + n_val:
        raise FoldError(f"fss: the derived trn/val split needs {n_trn + n_val} non-test class folders, got {len(rest)}")
    trn, val = derive_fss_trainval(rest, n_trn, FSS_TRAINVAL_SEED)
    return {"trn": trn, "val": val, "test": test}


def fss_classes(trainval: str | None = None, folders: Iterable[str] | None = None) -> tuple[str, ...]:
    """FSS-1000 class names in id order: sorted trn, then sorted val, then sorted test (id = position + 1)."""
    splits = fss_splits(trainval, folders)
    return tuple(n for split in ("trn", "val", "test") for n in sorted(splits[split]))


def fss_fold(fold: int = 0) -> Fold:
    """FSS-1000: one fold; the 240 test classes are novel, the 520 trn classes are base (val classes are neither)."""
    # Ids are positions in fss_classes(), so the table is the same whichever source the trn/val lists come from.
    _check_fold("fss", fold, 1)
    n_trn, n_val, n_test = (FSS_SPLIT_SIZES[s] for s in ("trn", "val", "test"))
    novel = tuple(range(n_trn + n_val + 1, n_trn + n_val + n_test + 1))
    return Fold("fss", 0, novel, tuple(range(1, n_trn + 1)))


def get_fold(dataset: str, fold: int, coco_mode: str = "interleaved") -> Fold:
    """Return the fold table of a dataset by name."""
    if dataset == "pascal":
        return pascal_fold(fold)
    if dataset == "coco":
        return coco_fold(fold, coco_mode)
    if dataset == "fss":
        return fss_fold(fold)
    if dataset == "toy":
        return toy_fold(fold)
    raise FoldError(f"unknown dataset {dataset!r}; expected one of pascal, coco, fss, toy")
