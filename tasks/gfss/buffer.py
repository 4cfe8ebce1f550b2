"""GAPS memory replay: the diversity-guided ("uniform_interval") choice of base images kept for the novel stages."""

from __future__ import annotations

import math

import numpy as np


class ReplayBufferError(ValueError):
    """Raised when the inputs of the replay-buffer rule are malformed (one line naming the value)."""


def buffer_score(cosine: float, pixel_fraction: float) -> float:
    """Score one (image, base class): cosine(class prototype, classifier weight) divided by the class's pixel fraction.

    Dividing by the area favours images where a small object is still well recognised.
    """
    if not math.isfinite(cosine):
        raise ReplayBufferError(f"buffer_score: cosine must be finite, got {cosine!r}")
    if not (0.0 < pixel_fraction <= 1.0):
        raise ReplayBufferError(f"buffer_score: pixel_fraction must be in (0, 1], got {pixel_fraction!r}")
    return float(cosine) / float(pixel_fraction)


def intervals_per_class(size: int, n_classes: int) -> int:
    """Return m = (size // n_classes) * 2, the number of score intervals each class is split into."""
    if n_classes < 1:
        raise ReplayBufferError(f"intervals_per_class: need at least one base class, got {n_classes}")
    if size < n_classes:
        raise ReplayBufferError(
            f"replay buffer size {size} is smaller than the {n_classes} base classes; expected size >= n_classes"
        )
    return (size // n_classes) * 2


def interval_candidates(scores: dict[int, list[tuple[str, float]]], m: int, rng: np.random.Generator) -> list[str]:
    """Return the sorted union over classes of one random image per non-empty score interval (m per class).

    Per class (classes in ascending id order, so the draws are reproducible) the (image, score) list is sorted by
    ascending score (ties by image id), split into m near-equal consecutive intervals with np.array_split semantics
    (a class with fewer than m images gives one interval per image), and one image is drawn uniformly from each
    non-empty interval. An image chosen for several classes appears once.
    """
    if m < 1:
        raise ReplayBufferError(f"interval_candidates: m must be >= 1, got {m}")
    chosen: set[str] = set()
    for class_id in sorted(scores):
        entries = scores[class_id]
        if not entries:
            raise ReplayBufferError(f"replay buffer: base class {class_id} has no scored image; expected at least one")
        ids = [image_id for image_id, _ in entries]
        if len(set(ids)) != len(ids):
            raise ReplayBufferError(f"replay buffer: base class {class_id} lists an image id more than once")
        for image_id, score in entries:
            if not math.isfinite(score):
                raise ReplayBufferError(
                    f"replay buffer: score of image {image_id!r} for class {class_id} is {score!r}; expected finite"
                )
        ordered = [image_id for image_id, _ in sorted(entries, key=lambda e: (e[1], e[0]))]
        for interval in np.array_split(np.arange(len(ordered)), m):
            if len(interval):
                chosen.add(ordered[int(interval[int(rng.integers(len(interval)))])])
    return sorted(chosen)


def uniform_interval_buffer(
    scores: dict[int, list[tuple[str, float]]], size: int, rng: np.random.Generator
) -> list[str]:
    """Pick the replay buffer: per-class interval candidates (see interval_candidates), then `size` of them at random.

    `scores` maps each base class to its (image id, buffer_score) pairs; n_base_classes = len(scores) and
    m = (size // n_base_classes) * 2. If the union of candidates has at most `size` images, all of them are kept
    (the buffer is then smaller than `size`). Deterministic given the generator state; returns sorted image ids.
    """
    if not scores:
        raise ReplayBufferError("uniform_interval_buffer: scores is empty; expected at least one base class")
    if size < 1:
        raise ReplayBufferError(f"uniform_interval_buffer: size must be >= 1, got {size}")
    candidates = interval_candidates(scores, intervals_per_class(size, len(scores)), rng)
    if len(candidates) <= size:
        return candidates
    keep = rng.choice(len(candidates), size=size, replace=False)
    return sorted(candidates[int(i)] for i in keep)
