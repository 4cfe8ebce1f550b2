"""Few-shot segmentation metrics (HSNet protocol): per-class foreground mIoU, pooled FB-IoU, ignore pixels excluded."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Query label values that are never counted: -1 in memory (storage/labels.py: IGNORE) and 255 as on disk.
IGNORE_VALUES: tuple[int, ...] = (-1, 255)


def episode_areas(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (intersection[2], union[2]) over (background, foreground) of one episode; ignore pixels drop out.

    `pred` is a boolean foreground mask; `target` is 0 background, 1 foreground, -1 or 255 ignore.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"episode_areas: prediction shape {pred.shape} differs from target shape {target.shape}")
    bad = ~np.isin(target, (0, 1, *IGNORE_VALUES))
    if bad.any():
        raise ValueError(
            f"episode_areas: target values must be 0, 1 or ignore {IGNORE_VALUES}; "
            f"got {sorted(np.unique(target[bad]))[:5]}"
        )
    valid = ~np.isin(target, IGNORE_VALUES)
    p = pred.astype(bool)[valid]
    t = target[valid] == 1
    inter = np.array([np.sum(~p & ~t), np.sum(p & t)], dtype=np.int64)
    union = np.array([np.sum(~p | ~t), np.sum(p | t)], dtype=np.int64)
    return inter, union


class IoUAccumulator:
    """Accumulates per-class background/foreground intersection and union over episodes of one fold."""

    def __init__(self, class_ids: Iterable[int]) -> None:
        """Track the fold's classes; mIoU averages over exactly these (a class never seen scores 0, as in HSNet)."""
        self.class_ids = tuple(sorted(set(int(c) for c in class_ids)))
        if not self.class_ids:
            raise ValueError("IoUAccumulator: expected at least one class id")
        self._row = {c: i for i, c in enumerate(self.class_ids)}
        self.inter = np.zeros((len(self.class_ids), 2), dtype=np.int64)
        self.union = np.zeros((len(self.class_ids), 2), dtype=np.int64)
        self.episodes = np.zeros(len(self.class_ids), dtype=np.int64)

    def add(self, class_id: int, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one episode: its class, boolean prediction and binary target (0/1, -1 or 255 ignore)."""
        if int(class_id) not in self._row:
            raise ValueError(f"IoUAccumulator: class {class_id} is not one of the fold's classes {self.class_ids}")
        inter, union = episode_areas(pred, target)
        row = self._row[int(class_id)]
        self.inter[row] += inter
        self.union[row] += union
        self.episodes[row] += 1

    def class_iou(self) -> dict[int, float]:
        """Return {class id: accumulated foreground IoU} = sum of intersections / max(sum of unions, 1)."""
        fg = self.inter[:, 1] / np.maximum(self.union[:, 1], 1)
        return {c: float(v) for c, v in zip(self.class_ids, fg)}

    def miou(self) -> float:
        """Return mIoU in [0, 1]: mean over the fold's classes of their accumulated foreground IoU."""
        return float(np.mean(list(self.class_iou().values())))

    def fb_iou(self) -> float:
        """Return FB-IoU in [0, 1]: mean of background and foreground IoU, each pooled over all episodes of the fold."""
        inter = self.inter.sum(0)
        union = self.union.sum(0)
        return float(np.mean(inter / np.maximum(union, 1)))

    def summary(self) -> dict:
        """Return {"miou", "fb_iou", "class_iou", "episodes"} (IoUs in [0, 1])."""
        return {
            "miou": self.miou(),
            "fb_iou": self.fb_iou(),
            "class_iou": {str(c): v for c, v in self.class_iou().items()},
            "episodes": int(self.episodes.sum()),
        }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Return the intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
