"""Episode images for few-shot learners: dataset records and synthetic shard samples by id, and binary targets."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

from maskforge.eval.datasets.base import SegDataset
from maskforge.storage.labels import IGNORE
from maskforge.storage.reader import RunReader

#: Prefix of synthetic sample ids in episode support pools (dataset image ids never contain ':').
SYNTHETIC_PREFIX = "syn:"
#: The manifest source of copy-paste scenes that paste the generation run's own real shots (tasks/objects.py).
REAL_SOURCE = "real"


def synthetic_id(key: str, run_index: int = 0) -> str:
    """Return the episode id of a run's sample: 'syn:KEY' for the first run, 'syn:I:KEY' for run I > 0."""
    return f"{SYNTHETIC_PREFIX}{key}" if run_index == 0 else f"{SYNTHETIC_PREFIX}{run_index}:{key}"


def binary_target(label: np.ndarray, class_id: int) -> np.ndarray:
    """Return an int64 target of one class: 1 foreground, 0 background (other classes too), -1 ignore."""
    target = (label == class_id).astype(np.int64)
    target[label == IGNORE] = -1
    return target


def synthetic_keys(run: RunReader, classes: Iterable[int], generated_only: bool = False) -> dict[int, list[str]]:
    """Return {class id: sorted sample keys of the run} for the given classes (classes without samples map to []).

    With `generated_only`, copy-paste scenes of source REAL_SOURCE are left out: they paste the generation run's
    real shots, which are other real images than a K-shot learner's own K shots of a novel class (extra real data,
    not synthetic data). Base classes may take them: their real images are all available in training.
    """
    table = run.manifest
    by_class: dict[int, list[str]] = {int(c): [] for c in classes}
    columns = (table.column(name).to_pylist() for name in ("key", "class_id", "source"))
    for key, cid, source in zip(*columns):
        if int(cid) in by_class and not (generated_only and source == REAL_SOURCE):
            by_class[int(cid)].append(key)
    return {c: sorted(keys) for c, keys in by_class.items()}


class EpisodeImages:
    """Loads (image, label) by id: dataset image ids, or synthetic_id()s of runs' samples; keeps an LRU cache."""

    def __init__(
        self, dataset: SegDataset, run: RunReader | Sequence[RunReader] | None = None, cache_size: int = 1024
    ) -> None:
        """Read from `dataset` and, for 'syn:' ids, from `run` (or the I-th of several runs); keep the last
        `cache_size` decoded items (LRU)."""
        self.dataset = dataset
        self.runs = [] if run is None else [run] if isinstance(run, RunReader) else list(run)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (uint8 RGB image, int32 label map) of an id."""
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        if image_id.startswith(SYNTHETIC_PREFIX):
            index, _, key = image_id[len(SYNTHETIC_PREFIX) :].rpartition(":")
            if not self.runs:
                raise KeyError(f"synthetic id {image_id!r} asked for, but no synthetic run is open")
            if int(index or 0) >= len(self.runs):
                raise KeyError(
                    f"synthetic id {image_id!r} asked for, but only {len(self.runs)} synthetic runs are open"
                )
            sample = self.runs[int(index or 0)].get(key)
            item = (sample.image, sample.label)
        else:
            record = self.dataset.load(image_id)
            item = (record.image, record.label)
        if self.cache_size:
            self._cache[image_id] = item
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return item
