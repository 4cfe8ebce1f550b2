"""Label-map conventions shared by every stage: dtype, background and ignore values."""

from __future__ import annotations

import numpy as np

#: In memory a label map is an int32 array: 0 background, dataset class ids, IGNORE for "do not count".
#: int32 (not uint8) because FSS-1000 has 1000 class ids; storage maps IGNORE to 255 on disk.
LABEL_DTYPE = np.int32
BACKGROUND = 0
IGNORE = -1
#: The value that marks ignored pixels in uint8 label PNGs on disk (PASCAL's boundary value).
IGNORE_ON_DISK = 255


def present_classes(label: np.ndarray) -> tuple[int, ...]:
    """Return the sorted class ids with at least one pixel in a label map (background and ignore excluded)."""
    values = np.unique(label)
    return tuple(int(v) for v in values if v != BACKGROUND and v != IGNORE)


def binary_mask(label: np.ndarray, class_id: int) -> np.ndarray:
    """Return the boolean foreground mask of one class in a label map."""
    return label == class_id
