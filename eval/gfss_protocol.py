"""Generalized few-shot segmentation protocol (GAPS / PIFS): task stream, class maps, supports, run seeds, vRFS."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from maskforge.storage.labels import BACKGROUND, IGNORE, IGNORE_ON_DISK

#: GAPS seeds numpy's global stream with this value before drawing one seed per run.
GAPS_MASTER_SEED = 4321
#: GAPS's replay buffer size, the denominator of vRFS's f_n.
VRFS_BUFFER_SIZE = 500


class GfssProtocolError(ValueError):
    """A GFSS protocol input that does not fit: a class stream, class map, support pool or vRFS argument."""


def task_stream(novel: Sequence[int], classes_per_step: int) -> list[tuple[int, ...]]:
    """Group a fold's novel classes, sorted ascending, into steps of `classes_per_step` (the last may be shorter)."""
    if classes_per_step < 1:
        raise GfssProtocolError(f"task_stream: classes_per_step must be at least 1, got {classes_per_step}")
    ordered = sorted(int(c) for c in novel)
    if not ordered:
        raise GfssProtocolError("task_stream: expected at least one novel class, got none")
    if len(set(ordered)) != len(ordered) or min(ordered) <= BACKGROUND:
        raise GfssProtocolError(f"task_stream: novel classes must be distinct positive ids, got {list(novel)}")
    return [tuple(ordered[i : i + classes_per_step]) for i in range(0, len(ordered), classes_per_step)]


def gaps_run_seeds(num_runs: int, master_seed: int = GAPS_MASTER_SEED) -> list[int]:
    """Return GAPS's per-run seeds: np.random.seed(master_seed) then randint(0, 99999, num_runs), as plain ints."""
    if num_runs < 1:
        raise GfssProtocolError(f"gaps_run_seeds: num_runs must be at least 1, got {num_runs}")
    # RandomState(seed) reproduces the legacy global stream that GAPS seeds with np.random.seed.
    return [int(s) for s in np.random.RandomState(master_seed).randint(0, 99999, num_runs)]


def _check_ids(what: str, ids: Sequence[int]) -> None:
    if len(set(ids)) != len(ids) or any(c <= BACKGROUND for c in ids):
        raise GfssProtocolError(f"ClassMap: {what} classes must be distinct positive dataset ids, got {list(ids)}")


@dataclass(frozen=True)
class ClassMap:
    """Dataset ids ↔ model ids: 0 background, base classes ascending → 1..n_base, learned novel appended in order."""

    base: tuple[int, ...]
    novel: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Check that base is strictly ascending, both groups hold distinct positive ids and they do not overlap."""
        object.__setattr__(self, "base", tuple(int(c) for c in self.base))
        object.__setattr__(self, "novel", tuple(int(c) for c in self.novel))
        _check_ids("base", self.base)
        _check_ids("novel", self.novel)
        if list(self.base) != sorted(self.base):
            raise GfssProtocolError(f"ClassMap: base classes must be in ascending dataset-id order, got {self.base}")
        both = sorted(set(self.base) & set(self.novel))
        if both:
            raise GfssProtocolError(f"ClassMap: classes {both} are both base and novel")

    @property
    def num_classes(self) -> int:
        """Number of model outputs: background + base + learned novel."""
        return 1 + len(self.base) + len(self.novel)

    def model_ids(self) -> dict[int, int]:
        """Return {dataset id: model id}, background 0 → 0 included."""
        ids = {BACKGROUND: 0}
        ids.update({c: i + 1 for i, c in enumerate(self.base + self.novel)})
        return ids

    def base_model_ids(self) -> tuple[int, ...]:
        """Model ids scored as base: background 0 and the base classes 1..n_base."""
        return tuple(range(len(self.base) + 1))

    def learned_novel_model_ids(self) -> tuple[int, ...]:
        """Model ids of the novel classes learned so far, in learning order: n_base + 1, n_base + 2, ..."""
        return tuple(range(len(self.base) + 1, self.num_classes))

    def with_novel(self, classes: Sequence[int]) -> ClassMap:
        """Return the map after learning `classes` (appended in the given order); a known or repeated id is an error."""
        new = tuple(int(c) for c in classes)
        known = sorted(set(new) & set(self.base + self.novel))
        if known:
            raise GfssProtocolError(f"ClassMap.with_novel: classes {known} are already base or learned novel classes")
        return ClassMap(self.base, self.novel + new)

    def to_model(self, label: np.ndarray, fold_novel: Sequence[int]) -> np.ndarray:
        """Map a dataset label map to model ids (int64); unlearned novel classes of the fold and ignore become -1.

        PIFS masking: pixels of a novel class not learned yet are excluded from scoring. 255 is read as the
        on-disk ignore value unless it is one of the fold's classes.
        """
        fold_novel = {int(c) for c in fold_novel}
        missing = sorted(set(self.novel) - fold_novel)
        if missing:
            raise GfssProtocolError(f"ClassMap.to_model: learned novel classes {missing} are not in the fold's novel")
        overlap = sorted(fold_novel & set(self.base))
        if overlap:
            raise GfssProtocolError(f"ClassMap.to_model: fold novel classes {overlap} are also base classes")
        label = np.asarray(label)
        if label.dtype.kind not in "iu":
            raise GfssProtocolError(f"ClassMap.to_model: label must hold integer class ids, got dtype {label.dtype}")
        lookup = self.model_ids()
        values, inverse = np.unique(label, return_inverse=True)
        mapped = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values.tolist()):
            if v in lookup:
                mapped[i] = lookup[v]
            elif v in fold_novel or v in (IGNORE, IGNORE_ON_DISK):
                mapped[i] = IGNORE
            else:
                raise GfssProtocolError(
                    f"ClassMap.to_model: label value {v} is neither background, a base class, a fold novel class "
                    f"nor ignore ({IGNORE}, {IGNORE_ON_DISK})"
                )
        return mapped[inverse].reshape(label.shape)

    def to_dataset(self, pred: np.ndarray) -> np.ndarray:
        """Map model ids back to dataset ids (int64); -1 stays -1 (ignore), any other unknown id is an error."""
        pred = np.asarray(pred)
        if pred.dtype.kind not in "iu":
            raise GfssProtocolError(f"ClassMap.to_dataset: prediction must hold integer model ids, got {pred.dtype}")
        table = np.array([BACKGROUND, *self.base, *self.novel], dtype=np.int64)
        bad = (pred != IGNORE) & ((pred < 0) | (pred >= self.num_classes))
        if bad.any():
            raise GfssProtocolError(
                f"ClassMap.to_dataset: model ids must be in 0..{self.num_classes - 1} or {IGNORE}, "
                f"got {sorted(np.unique(pred[bad]).tolist())[:5]}"
            )
        out = np.full(pred.shape, IGNORE, dtype=np.int64)
        keep = pred != IGNORE
        out[keep] = table[pred[keep]]
        return out


def novel_only_candidates(class_index: dict[int, list[str]], novel: Sequence[int], class_id: int) -> list[str]:
    """Return the sorted images holding `class_id` and no other novel class of the fold (GAPS's support pool)."""
    novel = [int(c) for c in novel]
    if class_id not in novel:
        raise GfssProtocolError(f"novel_only_candidates: class {class_id} is not one of the fold's novel {novel}")
    if class_id not in class_index:
        raise GfssProtocolError(f"novel_only_candidates: the class index has no entry for novel class {class_id}")
    others = set().union(*(class_index.get(c, ()) for c in novel if c != class_id))
    return sorted(set(class_index[class_id]) - others)


def select_supports(
    candidates: Sequence[str],
    shots: int,
    rng: np.random.Generator,
    pixels: Callable[[str], int],
    class_id: int,
    class_name: str = "",
) -> list[str]:
    """Draw `shots` distinct images holding > 1 pixel of the class, in an rng permutation of the sorted candidates."""
    if shots < 1:
        raise GfssProtocolError(f"select_supports: shots must be at least 1, got {shots}")
    pool = sorted(set(candidates))
    chosen: list[str] = []
    for i in rng.permutation(len(pool)):
        if pixels(pool[i]) > 1:
            chosen.append(pool[i])
            if len(chosen) == shots:
                return chosen
    name = f" ({class_name})" if class_name else ""
    raise GfssProtocolError(
        f"select_supports: class {class_id}{name} has {len(chosen)} usable support images (> 1 pixel) among "
        f"{len(pool)} candidates; {shots} shots asked"
    )


def vrfs_probability(n_base: int, n_novel_so_far: int, shots: int, buffer_size: int = VRFS_BUFFER_SIZE) -> float:
    """Return vRFS's novel sampling probability p = 2r / (3r + 1), r = max(1, sqrt(t / f_n)).

    t = 1 / (n_base + n_novel_so_far) with n_base excluding background and n_novel_so_far counting the current
    step's classes; f_n = shots / buffer_size.
    """
    if n_base < 0 or n_novel_so_far < 1 or shots < 1 or buffer_size < 1:
        raise GfssProtocolError(
            "vrfs_probability: expected n_base >= 0, n_novel_so_far >= 1, shots >= 1, buffer_size >= 1; got "
            f"{n_base}, {n_novel_so_far}, {shots}, {buffer_size}"
        )
    t = 1.0 / (n_base + n_novel_so_far)
    f_n = shots / buffer_size
    r = max(1.0, math.sqrt(t / f_n))
    return 2 * r / (3 * r + 1)
