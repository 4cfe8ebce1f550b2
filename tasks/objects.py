"""Stage 2, objects: cut the novel class's object out of each real shot ("real") or generated sample ("synthetic")."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from maskforge.eval.datasets.base import DatasetError, ImageRecord
from maskforge.storage.labels import binary_mask


@dataclass(frozen=True)
class PoolObject:
    """One pasteable object of a novel class: an RGB crop, its boolean mask and where it came from.

    Attributes:
        image: uint8 (h, w, 3) crop around the object.
        mask: bool (h, w) foreground of the class inside the crop (never empty).
        class_id: the novel class.
        source: how the object was made ("real" = cut from a real shot).
        mask_method: how its mask was made ("gt" = the dataset's ground truth).
        shot_ids: ids of the real shots it came from or was conditioned on.
        scores: quality scores of the mask (empty for ground truth).
    """

    image: np.ndarray
    mask: np.ndarray
    class_id: int
    source: str
    mask_method: str
    shot_ids: tuple[str, ...]
    scores: dict[str, float] = field(default_factory=dict)


def object_from_shot(record: ImageRecord, class_id: int) -> PoolObject:
    """Crop a shot to the bounding box of all pixels of `class_id` (every instance together, as GAPS does)."""
    mask = binary_mask(record.label, class_id)
    if not mask.any():
        raise DatasetError(
            f"empty support mask: image {record.image_id!r} has no pixel of class {class_id} "
            f"(classes present: {list(record.class_ids)})"
        )
    return crop_object(record.image, mask, class_id, "real", "gt", (record.image_id,))


def crop_object(
    image: np.ndarray,
    mask: np.ndarray,
    class_id: int,
    source: str,
    mask_method: str,
    shot_ids: tuple[str, ...],
    scores: dict[str, float] | None = None,
) -> PoolObject:
    """Crop an image and its non-empty bool mask to the mask's bounding box as a pasteable object."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return PoolObject(
        image=image[top:bottom, left:right].copy(),
        mask=mask[top:bottom, left:right].copy(),
        class_id=class_id,
        source=source,
        mask_method=mask_method,
        shot_ids=shot_ids,
        scores=dict(scores or {}),
    )


def object_from_sample(sample, class_id: int) -> PoolObject:
    """Cut a class's object out of a generated shard sample (its label's class pixels; an empty one is an error)."""
    mask = sample.label == class_id
    if not mask.any():
        raise DatasetError(f"generated sample {sample.key!r} has no pixel of class {class_id}; it cannot be pasted")
    return crop_object(
        sample.image,
        mask,
        class_id,
        "synthetic",
        sample.meta["mask_method"],
        tuple(sample.meta["shot_ids"]),
        sample.meta.get("scores"),
    )
