"""Dataset layout check: build the adapter and class indexes, decode every image (or a sample), count per split/fold."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.progress import track

from maskforge.eval.datasets import DATASET_NAMES, build_dataset
from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.config import ToyConfig
from maskforge.eval.folds import FoldError, get_fold
from maskforge.storage.labels import BACKGROUND, IGNORE, LABEL_DTYPE, present_classes

_N_FOLDS = {"pascal": 4, "coco": 4, "toy": 4, "fss": 1}
_FOLD_MODES = ("interleaved", "contiguous")
#: Problems listed per split before the rest are summed up in one "(+N more)" line, so the output stays bounded.
MAX_PROBLEMS_PER_SPLIT = 20


@dataclass
class FoldSummary:
    """One fold's class lists and, per split, how many images hold a novel class and how many only base classes."""

    index: int
    novel: tuple[int, ...]
    base: tuple[int, ...]
    novel_images: dict[str, int] = field(default_factory=dict)  # images with >= 1 novel class
    base_images: dict[str, int] = field(default_factory=dict)  # images with >= 1 base class and no novel class


@dataclass
class LayoutReport:
    """What check_layout found: counts per split, class and fold, and every problem (empty when the layout is sound)."""

    dataset: str
    root: str | None
    fold_mode: str
    sample: int | None = None  # images decoded per split; None = every image
    layout: str | None = None  # COCO's layout (dataset.coco_layout), as checked
    classes: dict[int, str] = field(default_factory=dict)
    split_images: dict[str, int] = field(default_factory=dict)
    class_images: dict[str, dict[int, int]] = field(default_factory=dict)  # split -> class id -> images
    folds: list[FoldSummary] = field(default_factory=list)
    decoded: dict[str, int] = field(default_factory=dict)  # split -> images decoded without error
    empty_classes: list[int] = field(default_factory=list)  # classes with no image in any split
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def sample_ids(ids: list[str], n: int) -> list[str]:
    """Return up to n ids spread evenly over a sorted list (deterministic, covers the start, middle and end)."""
    if n <= 0 or not ids:
        return []
    k = min(n, len(ids))
    return [ids[(i * len(ids)) // k] for i in range(k)]


def _record_problems(rec: ImageRecord, classes: dict[int, str], indexed: set[int] | None) -> list[str]:
    """Check one decoded record against the adapter contract; return what is wrong with it."""
    out: list[str] = []
    if rec.image.dtype != np.uint8 or rec.image.ndim != 3 or rec.image.shape[2] != 3:
        out.append(f"{rec.image_id}: image is {rec.image.dtype} {rec.image.shape}; expected uint8 (H, W, 3)")
    if rec.label.dtype != LABEL_DTYPE or rec.label.shape != rec.image.shape[:2]:
        out.append(
            f"{rec.image_id}: label is {rec.label.dtype} {rec.label.shape}; expected int32 {rec.image.shape[:2]}"
        )
    allowed = set(classes) | {BACKGROUND, IGNORE}
    stray = sorted(set(np.unique(rec.label).tolist()) - allowed)
    if stray:
        out.append(f"{rec.image_id}: label has values {stray[:8]}; expected 0, -1 or class ids")
    if tuple(rec.class_ids) != present_classes(rec.label):
        out.append(f"{rec.image_id}: class_ids {rec.class_ids} differ from the label's {present_classes(rec.label)}")
    if indexed is not None and not set(rec.class_ids) <= indexed:
        missing = sorted(set(rec.class_ids) - indexed)
        out.append(f"{rec.image_id}: classes {missing} are in the label but not in the class index")
    return out


def _fold_summary(ds_name: str, fold: int, fold_mode: str, index: dict[str, dict[int, list[str]]]) -> FoldSummary:
    f = get_fold(ds_name, fold, fold_mode)
    summary = FoldSummary(f.index, f.novel, f.base)
    for split, by_class in index.items():
        novel = {i for c in f.novel for i in by_class.get(c, ())}
        with_base = {i for c in f.base for i in by_class.get(c, ())}
        summary.novel_images[split] = len(novel)
        summary.base_images[split] = len(with_base - novel)
    return summary


def check_layout(
    name: str,
    root: str | None,
    fold_mode: str = "interleaved",
    sample: int | None = None,
    toy: ToyConfig | None = None,
    fss_trainval: str | None = None,
    coco_layout: str | None = None,
) -> LayoutReport:
    """Validate a dataset layout: build the adapter and class indexes, decode every image and label of every split.

    `fss_trainval` ("lists" or "derived") picks FSS-1000's trn/val source as `dataset.fss_trainval` does;
    `coco_layout` (instances2014, instances2017, stuffthingmaps2017) COCO's layout as `dataset.coco_layout` does.
    `sample=N` (>= 1) decodes only N images per split, spread evenly over the sorted ids (sample_ids). Layout
    faults are collected in `problems` (checking goes on where it can; every undecodable image is one problem,
    listed up to MAX_PROBLEMS_PER_SPLIT per split); an unknown dataset name, fold mode or a sample below 1 is a
    usage error and raises (DatasetError / FoldError).
    """
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if fold_mode not in _FOLD_MODES:
        raise FoldError(f"fold mode must be one of {_FOLD_MODES}, got {fold_mode!r}")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise DatasetError(f"sample must be a whole number >= 1 (images per split) or None for all, got {sample!r}")
    report = LayoutReport(name, root, fold_mode, sample)
    if name == "coco":
        report.layout = coco_layout or "instances2014"
    try:
        ds: SegDataset = build_dataset(name, root, toy, fss_trainval, coco_layout)
        report.classes = ds.classes()
        splits = ds.splits()
    except (DatasetError, FoldError) as err:
        report.problems.append(str(err))
        return report

    index: dict[str, dict[int, list[str]]] = {}
    for split in splits:
        try:
            ids = ds.image_ids(split)
            report.split_images[split] = len(ids)
            if not ids:
                report.problems.append(f"{split}: split {split!r} has no images; expected at least one")
            index[split] = ds.class_index(split)
        except (DatasetError, FoldError) as err:
            report.problems.append(f"{split}: {err}")
            continue
        report.class_images[split] = {cid: len(index[split].get(cid, ())) for cid in report.classes}

    for split in splits:
        if split not in report.split_images:
            continue
        by_image: dict[str, set[int]] | None = None
        if split in index:
            by_image = {}
            for cid, image_ids in index[split].items():
                for image_id in image_ids:
                    by_image.setdefault(image_id, set()).add(cid)
        ids = ds.image_ids(split)
        chosen = ids if sample is None else sample_ids(ids, sample)
        decoded = 0
        split_problems: list[str] = []
        for image_id in track(chosen, description=f"{name} {split}: decoding", transient=True):
            try:
                rec = ds.load(image_id)
            except DatasetError as err:
                split_problems.append(f"{split}: {err}")
                continue
            decoded += 1
            indexed = None if by_image is None else by_image.get(image_id, set())
            split_problems.extend(f"{split}: {p}" for p in _record_problems(rec, report.classes, indexed))
        report.problems.extend(split_problems[:MAX_PROBLEMS_PER_SPLIT])
        if len(split_problems) > MAX_PROBLEMS_PER_SPLIT:
            report.problems.append(f"{split}: (+{len(split_problems) - MAX_PROBLEMS_PER_SPLIT} more problems)")
        report.decoded[split] = decoded

    report.empty_classes = [
        cid for cid in report.classes if report.class_images and all(c[cid] == 0 for c in report.class_images.values())
    ]
    report.folds = [_fold_summary(name, f, fold_mode, index) for f in range(_N_FOLDS[name])]
    return report


def _ranges(ids: tuple[int, ...] | list[int]) -> str:
    """Compress sorted ids to "1-5, 9, 12-14" so FSS's 240 novel ids fit on one line."""
    parts: list[str] = []
    ids = sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ", ".join(parts) if parts else "-"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Format rows as aligned plain-text columns (columns in `right` right-aligned)."""
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[c].rjust(widths[c]) if c in right else row[c].ljust(widths[c]) for c in range(len(row))]
        return "  ".join(cells).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def format_report(report: LayoutReport) -> str:
    """Render a LayoutReport as plain text: split sizes, images per class and split, per-fold counts, problems."""
    layout = f"   layout: {report.layout}" if report.layout else ""
    lines = [f"dataset: {report.dataset}   root: {report.root or '-'}{layout}"]
    splits = list(report.split_images)
    if splits:
        lines.append("images per split: " + " | ".join(f"{s} {report.split_images[s]}" for s in splits))
        what = "decoded (all):    " if report.sample is None else f"decoded (sample of {report.sample} per split): "
        lines.append(what + " | ".join(f"{s} {report.decoded.get(s, 0)}" for s in splits))
    indexed = [s for s in splits if s in report.class_images]
    if report.classes and indexed:
        lines += ["", "images per class"]
        rows = [
            [str(cid), name, *(str(report.class_images[s][cid]) for s in indexed)]
            for cid, name in report.classes.items()
        ]
        lines += _table(["id", "class", *indexed], rows, right={0, *range(2, 2 + len(indexed))})
    if report.folds:
        mode = f" ({report.fold_mode})" if report.dataset == "coco" else ""
        lines += ["", f"folds{mode}"]
        rows = []
        for f in report.folds:
            rows.append(
                [str(f.index), _ranges(f.novel), str(len(f.base))]
                + [f"{f.novel_images.get(s, 0)} / {f.base_images.get(s, 0)}" for s in indexed]
            )
        lines += _table(
            ["fold", "novel ids", "n base", *(f"{s}: novel / base-only imgs" for s in indexed)], rows, right={0, 2}
        )
        for f in report.folds:
            if len(f.novel) <= 20 and report.classes:
                names = ", ".join(f"{c} {report.classes.get(c, '?')}" for c in f.novel)
                lines.append(f"fold {f.index} novel: {names}")
    if report.empty_classes:
        empty = report.empty_classes
        lines += ["", f"classes with no image in any split ({len(empty)}): {_ranges(empty)}"]
    lines += ["", f"problems ({len(report.problems)}):" if report.problems else "problems: none"]
    lines += [f"  - {p}" for p in report.problems]
    return "\n".join(lines)
