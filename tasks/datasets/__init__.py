"""Dataset adapters (toy, pascal, coco, fss) and `build_dataset`, the one registry that constructs them by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.datasets.base import DatasetError, ImageRecord, SegDataset

if TYPE_CHECKING:
    from tasks.config import ToyConfig

#: Dataset names build_dataset knows; only "toy" is rendered in-process, the others read `root`.
DATASET_NAMES: tuple[str, ...] = ("toy", "pascal", "coco", "fss")

__all__ = ["DATASET_NAMES", "DatasetError", "ImageRecord", "SegDataset", "build_dataset"]


def build_dataset(name: str, root: str | None, toy: ToyConfig | None = None) -> SegDataset:
    """Construct the adapter of a dataset by name; an unknown name or a wrong root is a DatasetError.

    `toy` configures the toy world only (DatasetConfig always carries one, so on-disk datasets ignore it).
    """
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if name == "toy":
        if root:
            raise DatasetError(f"toy: root must be empty (the toy world is rendered in-process), got {root!r}")
        from tasks.config import ToyConfig
        from tasks.datasets.toy import ToyDataset

        return ToyDataset(toy or ToyConfig())
    if not root:
        raise DatasetError(f"{name}: a dataset root is required; expected the directory holding the dataset")
    # Imported here so that importing the package does not pull pycocotools or PIL for toy-only runs.
    if name == "pascal":
        from tasks.datasets.pascal import PascalDataset

        return PascalDataset(root)
    if name == "coco":
        from tasks.datasets.coco import CocoDataset

        return CocoDataset(root)
    from tasks.datasets.fss import FssDataset

    return FssDataset(root)
