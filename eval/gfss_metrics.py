"""GFSS metrics (GAPS / PIFS protocol): split-wide confusion matrix, base/novel mIoU, harmonic mean, run summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

from maskforge.storage.labels import IGNORE, IGNORE_ON_DISK

#: GAPS's guard against an empty union (seg_trainer.py:151): an absent class scores 0.
UNION_EPS = 1e-10
#: Keys of one step's scores that the PIFS summary averages.
STEP_KEYS: tuple[str, ...] = ("base_miou", "novel_miou")


class GfssMetricsError(ValueError):
    """A GFSS metrics input that does not fit: shapes, id ranges, empty groups or summaries."""


def harmonic_mean(a: float, b: float) -> float:
    """Return 2 / (1/a + 1/b), and 0 when either is 0 (a model that gets one side fully wrong scores 0)."""
    if not (a >= 0 and b >= 0 and math.isfinite(a) and math.isfinite(b)):
        raise GfssMetricsError(f"harmonic_mean: expected two finite values >= 0, got {a} and {b}")
    return 0.0 if a == 0 or b == 0 else 2 * a * b / (a + b)


class GfssAccumulator:
    """Accumulates a confusion matrix over a whole val split; IoU per class = split-wide intersection / union."""

    def __init__(self, num_classes: int) -> None:
        """Score model ids 0..num_classes - 1 (background, base, novel learned so far)."""
        if num_classes < 1:
            raise GfssMetricsError(f"GfssAccumulator: num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self._confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # 255 is the on-disk ignore value unless it is a real model id of a model with more than 255 classes.
        self._ignore = (IGNORE, IGNORE_ON_DISK) if self.num_classes <= IGNORE_ON_DISK else (IGNORE,)

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the (num_classes, num_classes) int64 confusion matrix; rows = target, columns = prediction."""
        return self._confusion.copy()

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image: predicted model ids and target model ids, -1 (or 255) for excluded pixels."""
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.shape != target.shape:
            raise GfssMetricsError(f"GfssAccumulator: prediction shape {pred.shape} differs from target {target.shape}")
        for name, a in (("prediction", pred), ("target", target)):
            if a.dtype.kind not in "iu":
                raise GfssMetricsError(f"GfssAccumulator: {name} must hold integer model ids, got dtype {a.dtype}")
        bad = (pred < 0) | (pred >= self.num_classes)
        if bad.any():
            raise GfssMetricsError(
                f"GfssAccumulator: prediction values must be in 0..{self.num_classes - 1}, "
                f"got {sorted(np.unique(pred[bad]).tolist())[:5]}"
            )
        valid = ~np.isin(target, self._ignore)
        t = target[valid].astype(np.int64)
        bad = (t < 0) | (t >= self.num_classes)
        if bad.any():
            raise GfssMetricsError(
                f"GfssAccumulator: target values must be in 0..{self.num_classes - 1} or ignore {self._ignore}, "
                f"got {sorted(np.unique(t[bad]).tolist())[:5]}"
            )
        flat = t * self.num_classes + pred[valid].astype(np.int64)
        self._confusion += np.bincount(flat, minlength=self.num_classes**2).reshape(self._confusion.shape)

    def class_iou(self) -> np.ndarray:
        """Return IoU per model id (float64): intersection / (union + 1e-10), so 0 for a class absent from the split.

        GAPS scores every class this way (seg_trainer.py:151, `class_intersection / (class_union + 1e-10)`): a class
        with no target and no predicted pixel in the evaluated images gets IoU 0 and stays in the group means.
        """
        inter = np.diag(self._confusion).astype(np.float64)
        union = (self._confusion.sum(0) + self._confusion.sum(1)).astype(np.float64) - inter
        return inter / (union + UNION_EPS)

    def absent(self) -> list[int]:
        """Model ids with no target and no predicted pixel in the split (scored 0, as GAPS)."""
        inter = np.diag(self._confusion)
        union = self._confusion.sum(0) + self._confusion.sum(1) - inter
        return [int(c) for c in np.flatnonzero(union == 0)]

    def _group_miou(self, ids: Sequence[int], iou: np.ndarray) -> float:
        # GAPS averages every class of the group, an absent one included with IoU 0 (np.mean, no nan-mean)
        return float(np.mean(iou[list(ids)]))

    def scores(self, base_ids: Sequence[int], novel_ids: Sequence[int]) -> dict:
        """Return {"base_miou", "novel_miou", "hm", "class_iou", "absent"}; base includes background (model id 0).

        With no novel ids (the base stage) novel_miou and hm are None. class_iou is {model id as str: IoU} for
        every class; "absent" lists the model ids with no target and no predicted pixel (IoU 0, kept in the means).
        """
        base_ids = [int(c) for c in base_ids]
        novel_ids = [int(c) for c in novel_ids]
        every = base_ids + novel_ids
        if not base_ids or len(set(every)) != len(every) or any(not 0 <= c < self.num_classes for c in every):
            raise GfssMetricsError(
                f"GfssAccumulator.scores: base {base_ids} and novel {novel_ids} must be non-empty (base), distinct "
                f"model ids in 0..{self.num_classes - 1}"
            )
        iou = self.class_iou()
        base = self._group_miou(base_ids, iou)
        novel = self._group_miou(novel_ids, iou) if novel_ids else None
        return {
            "base_miou": base,
            "novel_miou": novel,
            "hm": None if novel is None else harmonic_mean(base, novel),
            "class_iou": {str(c): float(v) for c, v in enumerate(iou)},
            "absent": self.absent(),
        }


def pifs_summary(steps: list[dict]) -> dict:
    """Average base and novel mIoU over the incremental steps, HM of those averages, plus the last step's values.

    GAPS reports base and novel IoU averaged over the results after each incremental task; the average HM is
    the harmonic mean of the two averages, not the mean of the per-step HMs.
    """
    if not steps:
        raise GfssMetricsError("pifs_summary: expected at least one incremental step, got none")
    for i, step in enumerate(steps):
        for key in STEP_KEYS:
            if step.get(key) is None:
                raise GfssMetricsError(f"pifs_summary: step {i} has no {key!r} (only incremental steps are summed up)")
    base = float(np.mean([s["base_miou"] for s in steps]))
    novel = float(np.mean([s["novel_miou"] for s in steps]))
    last = steps[-1]
    return {
        "base_miou": base,
        "novel_miou": novel,
        "hm": harmonic_mean(base, novel),
        "base_miou_last": float(last["base_miou"]),
        "novel_miou_last": float(last["novel_miou"]),
        "hm_last": harmonic_mean(float(last["base_miou"]), float(last["novel_miou"])),
    }


#: HM keys of a summary and the (base, novel) keys whose means they are the harmonic mean of.
HM_OF = {"hm": ("base_miou", "novel_miou"), "hm_last": ("base_miou_last", "novel_miou_last")}


def seed_summary(runs: list[dict]) -> dict:
    """Return, for each key of the runs' PIFS summaries, the mean over runs and key + "_std" (ddof 0); plus "runs".

    As Table 1 aggregates, "hm" and "hm_last" are the harmonic mean of the mean base and mean novel mIoU over runs,
    not the mean of the per-run HMs; their "_std" is the spread (ddof 0) of the per-run HMs.
    """
    if not runs:
        raise GfssMetricsError("seed_summary: expected at least one run summary, got none")
    keys = list(runs[0])
    for i, run in enumerate(runs):
        if set(run) != set(keys):
            raise GfssMetricsError(f"seed_summary: run {i} has keys {sorted(run)}; expected {sorted(keys)}")
    for key in keys:
        bad = [i for i, run in enumerate(runs) if not isinstance(run[key], Real) or isinstance(run[key], bool)]
        if bad:
            raise GfssMetricsError(f"seed_summary: key {key!r} of runs {bad} is not a number")
    out = _mean_and_spread(runs, keys)
    out["runs"] = len(runs)
    return out


def fold_mean(summaries: list[dict]) -> dict:
    """Table 1's mean over folds: each metric averaged over the folds' summaries, HM of the mean base and novel.

    "_std" keys are the spread (ddof 0) of the folds' values; "folds" counts them.
    """
    if not summaries:
        raise GfssMetricsError("fold_mean: expected at least one fold summary, got none")
    keys = [k for k in summaries[0] if not k.endswith("_std") and k not in ("runs", "folds")]
    out = _mean_and_spread(summaries, keys)
    out["folds"] = len(summaries)
    return out


def _mean_and_spread(rows: list[dict], keys: list[str]) -> dict:
    """Each key's mean over the rows and its spread (`KEY_std`, ddof 0); every HM_OF key is then the harmonic mean
    of the mean base and mean novel mIoU (Table 1's aggregation), not the mean of the rows' HMs."""
    out: dict = {}
    for key in keys:
        values = np.array([float(row[key]) for row in rows], dtype=np.float64)
        out[key] = float(values.mean())
        out[key + "_std"] = float(values.std(ddof=0))
    for key, (base, novel) in HM_OF.items():
        if key in out and base in out and novel in out:
            out[key] = harmonic_mean(out[base], out[novel])
    return out
