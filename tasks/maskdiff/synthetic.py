"""Synthetic K-shot instances: connected components of a class's pixels in the samples of a maskforge run."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from maskforge.eval.episode_data import synthetic_keys
from maskforge.eval.instances import Instance
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError

#: Components smaller than this many pixels are dropped: specks of a generated mask (stray or anti-aliased pixels)
#: are no objects, and a box of a few pixels gives the detector and the mask head nothing to learn from.
MIN_COMPONENT_PIXELS = 16
#: The config field the runs come from (named in errors).
FIELD = "finetune.synthetic_runs"


def components(label: np.ndarray, class_id: int) -> list[tuple[int, Instance]]:
    """Return (component index, Instance) of each 8-connected component of `label == class_id` with at least
    MIN_COMPONENT_PIXELS pixels; indices count every component in OpenCV's raster order (dropped ones too), so an
    index names the same pixels whatever the size cut."""
    count, parts = cv2.connectedComponents((np.asarray(label) == class_id).astype(np.uint8), connectivity=8)
    out = []
    for j in range(1, count):
        mask = parts == j
        if int(mask.sum()) >= MIN_COMPONENT_PIXELS:
            out.append((j - 1, Instance(int(class_id), mask)))
    return out


def require_generated(reader: RunReader, url: str, classes: Iterable[int]) -> dict[int, list[str]]:
    """Return {class id: generated sample keys} of `classes` in a run (its manifest: nothing is decoded); a run without
    a single generated sample of them is a ConfigError naming finetune.synthetic_runs and the run."""
    classes = sorted({int(c) for c in classes})
    keys = synthetic_keys(reader, classes, generated_only=True)
    if not any(keys.values()):
        raise ConfigError(
            f"{FIELD}: {url} holds no generated sample of the classes {classes} ('real'-source copy-paste scenes "
            "excluded); expected samples of them"
        )
    return keys


def synthetic_instances(
    reader: RunReader, url: str, classes: Iterable[int]
) -> dict[int, list[tuple[str, int, Instance]]]:
    """Return {class id: [(sample key, component index, Instance), ...]} of the samples of `classes` in the run
    `reader` reads (opened from `url`, named in errors).

    Each generated sample of class c (the manifest's class_id) gives one instance per connected component of its
    `label == c` pixels (see components()); copy-paste scenes of the generation run's real shots are left out, since
    they would add real instances beyond the K shots (see synthetic_keys). Every asked class is a key (an empty list
    when it has no usable component). A run without a single generated sample of these classes is a ConfigError
    naming finetune.synthetic_runs and the run.
    """
    classes = sorted({int(c) for c in classes})
    keys = require_generated(reader, url, classes)
    out: dict[int, list[tuple[str, int, Instance]]] = {c: [] for c in classes}
    for cid in classes:
        for key in keys[cid]:
            out[cid] += [(key, j, inst) for j, inst in components(reader.get(key).label, cid)]
    return out
