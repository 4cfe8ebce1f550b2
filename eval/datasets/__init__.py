"""Dataset adapters (toy, pascal, coco, fss): `build_dataset` builds one by name, `open_dataset` once per process.

The names below are loaded on first use (PEP 562): importing a submodule such as `eval.datasets.config` (every config
check does) runs this file, and importing every adapter here cost the CLI's start-up about 0.2 s (bench/cli_start.py).
"""

from __future__ import annotations

from maskforge.storage.lazy_exports import lazy_getattr

#: Name -> the submodule that defines it.
_EXPORTS = {
    "COCO_LAYOUTS": "registry",
    "DATASET_NAMES": "registry",
    "build_dataset": "registry",
    "forget_datasets": "registry",
    "open_dataset": "registry",
    "DatasetError": "base",
    "ImageRecord": "base",
    "SegDataset": "base",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
