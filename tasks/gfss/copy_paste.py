"""GAPS guided copy-paste: context-similar base images, vRFS object counts, and pasting cut objects onto them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from maskforge.tasks.compose import resize_object

SOURCES = ("real", "synthetic")


class CopyPasteError(ValueError):
    """Raised when an object, image, plan or pool handed to the GAPS copy-paste is malformed (one line)."""


@dataclass(frozen=True)
class PasteObject:
    """One pasteable object: uint8 (h, w, 3) crop, bool (h, w) non-empty mask, class, source and origin id."""

    image: np.ndarray
    mask: np.ndarray
    class_id: int
    source: str
    origin: str

    def __post_init__(self) -> None:
        """Check shapes, dtypes and source at construction, so a bad object fails where it is made."""
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise CopyPasteError(
                f"object {self.origin!r}: image must be uint8 (h, w, 3), got {self.image.dtype} {self.image.shape}"
            )
        if self.mask.dtype != np.bool_ or self.mask.shape != self.image.shape[:2]:
            raise CopyPasteError(
                f"object {self.origin!r}: mask must be bool {self.image.shape[:2]}, got {self.mask.dtype} "
                f"{self.mask.shape}"
            )
        if not self.mask.any():
            raise CopyPasteError(f"object {self.origin!r} of class {self.class_id}: mask is empty")
        if self.source not in SOURCES:
            raise CopyPasteError(f"object {self.origin!r}: source must be one of {SOURCES}, got {self.source!r}")


@dataclass(frozen=True)
class SynthesisPlan:
    """What was decided for one training sample.

    Attributes:
        class_id: the selected novel class of the current step.
        base_index: index of the base image in the replay buffer.
        context: True when the base image was drawn from the class's context-similar subset.
        objects: (class_id, index in that class's pool) in paste order: other-class objects first, then the
            selected class's instances, so the selected class ends on top.
    """

    class_id: int
    base_index: int
    context: bool
    objects: tuple[tuple[int, int], ...]


def cut_object(image: np.ndarray, label: np.ndarray, class_id: int, source: str, origin: str) -> PasteObject:
    """Crop an image to the bounding box of ALL pixels of `class_id` (every region together); mask = label == class."""
    if image.shape[:2] != label.shape:
        raise CopyPasteError(f"image {origin!r}: image {image.shape[:2]} and label {label.shape} differ in size")
    mask = label == class_id
    if not mask.any():
        raise CopyPasteError(f"image {origin!r} has no pixel of class {class_id}; nothing to cut")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return PasteObject(image[box].copy(), mask[box].copy(), int(class_id), source, origin)


def paste(
    image: np.ndarray,
    label: np.ndarray,
    obj: PasteObject,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.1, 2.0),
    label_value: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste one object onto copies of (image, label); the inputs are not modified.

    Random draws, in this order: flip (probability 0.5, horizontal), scale U(scale[0], scale[1]) of the object's
    size, then top and left (uniform over the positions where it fits). The scale is clamped, keeping the aspect
    ratio, so the object fits inside the base image, and each side is at least 1 px. The crop is resized bilinear,
    the mask nearest; image and label are overwritten where the resized mask is true (a mask shrunk to nothing
    pastes nothing). The label value is `label_value`, or the object's class_id when None.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != label.shape:
        raise CopyPasteError(f"paste: base image must be (H, W, 3) matching label {label.shape}, got {image.shape}")
    lo, hi = scale
    if not (0.0 < lo <= hi):
        raise CopyPasteError(f"paste: scale must satisfy 0 < min <= max, got {scale}")
    flip = bool(rng.random() < 0.5)
    drawn = float(rng.uniform(lo, hi))
    H, W = label.shape
    h, w = obj.mask.shape
    s = min(drawn, H / h, W / w)  # clamp so the object fits inside the base image
    nh, nw = min(H, max(1, round(h * s))), min(W, max(1, round(w * s)))
    top, left = int(rng.integers(0, H - nh + 1)), int(rng.integers(0, W - nw + 1))
    if flip:
        obj = replace(obj, image=np.ascontiguousarray(obj.image[:, ::-1]), mask=np.ascontiguousarray(obj.mask[:, ::-1]))
    crop, mask = resize_object(obj, nh, nw)
    out_image, out_label = image.copy(), label.copy()
    window = (slice(top, top + nh), slice(left, left + nw))
    out_image[window][mask] = crop[mask]
    out_label[window][mask] = obj.class_id if label_value is None else label_value
    return out_image, out_label


def context_similar(support_vectors: np.ndarray, buffer_vectors: np.ndarray, top_frac: float = 0.05) -> np.ndarray:
    """Return the sorted unique buffer indices among the top k = max(1, round(top_frac * N)) by cosine, per support.

    Rows are globally-average-pooled features; both sides are L2-normalised here. Ties keep the lower index.
    """
    support = np.asarray(support_vectors, dtype=np.float64)
    buffer = np.asarray(buffer_vectors, dtype=np.float64)
    if support.ndim != 2 or buffer.ndim != 2:
        raise CopyPasteError(
            f"context_similar: expected 2-D support [S, D] and buffer [N, D], got {support.shape} and {buffer.shape}"
        )
    if support.shape[0] < 1 or buffer.shape[0] < 1:
        raise CopyPasteError(f"context_similar: need S >= 1 and N >= 1, got {support.shape} and {buffer.shape}")
    if support.shape[1] != buffer.shape[1]:
        raise CopyPasteError(
            f"context_similar: feature sizes differ, support D={support.shape[1]} and buffer D={buffer.shape[1]}"
        )
    if not (0.0 < top_frac <= 1.0):
        raise CopyPasteError(f"context_similar: top_frac must be in (0, 1], got {top_frac!r}")
    k = max(1, round(top_frac * buffer.shape[0]))
    sims = _normalise(support, "support") @ _normalise(buffer, "buffer").T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.unique(top).astype(np.int64)


def _normalise(vectors: np.ndarray, name: str) -> np.ndarray:
    """L2-normalise rows; a zero or non-finite row has no direction, so it is an error."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if len(bad):
        raise CopyPasteError(f"context_similar: {name} row {int(bad[0])} is zero or non-finite; cannot normalise")
    return vectors / norms


def plan_sample(
    rng: np.random.Generator,
    step_classes: Sequence[int],
    pools: dict[int, Sequence[PasteObject]],
    buffer_size: int,
    context_sets: dict[int, np.ndarray],
    p_vrfs: float,
    context_prob: float = 0.9,
) -> SynthesisPlan:
    """Decide one sample: novel class, base image, and the objects to paste (vRFS).

    Random draws in this order (each u below is always drawn; the object picks only when that branch is taken):
    (1) class, uniform over sorted(step_classes); (2) u < context_prob -> base index uniform over
    context_sets[class], else uniform over range(buffer_size) (a missing or empty context set always gives the
    uniform draw and context=False); (3) u < p_vrfs -> 2 objects of OTHER pool classes (each: class uniform over the
    other classes, then object uniform in its pool), only when another class is in `pools`; (4) u < p_vrfs -> 2
    instances of the selected class, otherwise none (each uniform in its pool). As GAPS's synthesizer_sample
    (fs_incremental_trainer.py:293-298: `if torch.rand(1) < selected_novel_prob: for i in range(2): paste`), a
    sample has no instance of the selected class with probability 1 - p_vrfs, and no novel object at all when (3)
    did not fire either: a pure replay of the base image. The selected class's instances come last in `objects`
    (pasted on top).
    """
    classes = sorted(int(c) for c in step_classes)
    if not classes:
        raise CopyPasteError("plan_sample: step_classes is empty; expected at least one novel class")
    if len(set(classes)) != len(classes):
        raise CopyPasteError(f"plan_sample: step_classes has duplicates: {classes}")
    missing = [c for c in classes if c not in pools]
    if missing:
        raise CopyPasteError(f"plan_sample: step classes {missing} have no pool; pools hold {sorted(pools)}")
    empty = sorted(c for c, pool in pools.items() if len(pool) == 0)
    if empty:
        raise CopyPasteError(f"plan_sample: the object pools of classes {empty} are empty; expected >= 1 object")
    if buffer_size < 1:
        raise CopyPasteError(f"plan_sample: buffer_size must be >= 1, got {buffer_size}")
    for name, p in (("p_vrfs", p_vrfs), ("context_prob", context_prob)):
        if not (0.0 <= p <= 1.0):
            raise CopyPasteError(f"plan_sample: {name} must be in [0, 1], got {p!r}")

    class_id = classes[int(rng.integers(len(classes)))]

    context_set = np.asarray(context_sets.get(class_id, ()), dtype=np.int64)
    if context_set.size and (context_set.min() < 0 or context_set.max() >= buffer_size):
        raise CopyPasteError(
            f"plan_sample: context set of class {class_id} has indices outside [0, {buffer_size}): "
            f"{int(context_set.min())}..{int(context_set.max())}"
        )
    use_context = bool(rng.random() < context_prob) and context_set.size > 0
    if use_context:
        base_index = int(context_set[int(rng.integers(context_set.size))])
    else:
        base_index = int(rng.integers(buffer_size))

    objects: list[tuple[int, int]] = []
    others = sorted(c for c in pools if c != class_id)
    if rng.random() < p_vrfs and others:
        for _ in range(2):
            other = others[int(rng.integers(len(others)))]
            objects.append((other, int(rng.integers(len(pools[other])))))
    n_instances = 2 if rng.random() < p_vrfs else 0
    for _ in range(n_instances):
        objects.append((class_id, int(rng.integers(len(pools[class_id])))))
    return SynthesisPlan(class_id, base_index, use_context, tuple(objects))


def synthesize(
    plan: SynthesisPlan,
    base_image: np.ndarray,
    base_label: np.ndarray,
    pools: dict[int, Sequence[PasteObject]],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.1, 2.0),
    label_of: Callable[[int], int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the plan's objects in order (other classes first, the selected class last, on top) onto a base image.

    Each object uses paste()'s draws in turn; the label value is label_of(class_id) when given, else class_id.
    """
    image, label = base_image, base_label
    for class_id, index in plan.objects:
        pool = pools.get(class_id)
        if pool is None or not (0 <= index < len(pool)):
            size = "no pool" if pool is None else f"a pool of {len(pool)}"
            raise CopyPasteError(f"synthesize: object {index} of class {class_id} is missing; the class has {size}")
        obj = pool[index]
        if obj.class_id != class_id:
            raise CopyPasteError(
                f"synthesize: pool of class {class_id} holds object {obj.origin!r} of class {obj.class_id}"
            )
        value = class_id if label_of is None else int(label_of(class_id))
        image, label = paste(image, label, obj, rng, scale, value)
    if not plan.objects:  # paste() copies; keep the "never modifies inputs" promise for an empty plan too
        image, label = base_image.copy(), base_label.copy()
    return image, label
