"""The dataset registry: `build_dataset` builds an adapter (toy, pascal, coco, fss) by name, `open_dataset` once per
process. Imported through the package (`from maskforge.eval.datasets import open_dataset`), which loads it on first
use so that a config check does not import every adapter."""

from __future__ import annotations

from functools import lru_cache

from maskforge.eval.datasets.base import DatasetError, SegDataset
from maskforge.eval.datasets.coco import CocoDataset
from maskforge.eval.datasets.coco_stuff import CocoStuffDataset
from maskforge.eval.datasets.config import DatasetConfig, ToyConfig
from maskforge.eval.datasets.fss import FssDataset
from maskforge.eval.datasets.pascal import PascalDataset
from maskforge.eval.datasets.toy import ToyDataset

#: Dataset names build_dataset knows; only "toy" is rendered in-process, the others read `root`.
DATASET_NAMES: tuple[str, ...] = ("toy", "pascal", "coco", "fss")
#: Datasets kept open per process (open_dataset): a run uses one; a deployment worker may see a few.
OPEN_DATASETS = 4

#: COCO layouts (dataset.coco_layout): the instances JSON of a year painted into label maps, or GAPS's COCO2017
#: with COCO-Stuff thing maps.
COCO_LAYOUTS: tuple[str, ...] = ("instances2014", "instances2017", "stuffthingmaps2017")


def build_dataset(
    name: str,
    root: str | None,
    toy: ToyConfig | None = None,
    fss_trainval: str | None = None,
    coco_layout: str | None = None,
) -> SegDataset:
    """Construct the adapter of a dataset by name; an unknown name or a wrong root is a DatasetError.

    `toy` configures the toy world only (DatasetConfig always carries one, so on-disk datasets ignore it).
    `fss_trainval` picks FSS-1000's trn/val lists ("lists", the default, or "derived"); other datasets refuse it.
    `coco_layout` picks COCO's layout (COCO_LAYOUTS; None: instances2014); other datasets refuse it.
    """
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    if fss_trainval is not None and name != "fss":
        raise DatasetError(f"{name}: fss_trainval applies to FSS-1000 only, got {fss_trainval!r}")
    if coco_layout is not None and (name != "coco" or coco_layout not in COCO_LAYOUTS):
        raise DatasetError(
            f"{name}: coco_layout {coco_layout!r}; expected one of {', '.join(COCO_LAYOUTS)}, for dataset coco only"
        )
    if name == "toy":
        if root:
            raise DatasetError(f"toy: root must be empty (the toy world is rendered in-process), got {root!r}")
        return ToyDataset(toy or ToyConfig())
    if not root:
        raise DatasetError(f"{name}: a dataset root is required; expected the directory holding the dataset")
    if name == "fss":
        return FssDataset(root, fss_trainval)
    if name == "coco":
        if coco_layout == "stuffthingmaps2017":
            return CocoStuffDataset(root)
        return CocoDataset(root, year="2017" if coco_layout == "instances2017" else "2014")
    return PascalDataset(root)


def open_dataset(config: DatasetConfig) -> SegDataset:
    """Return the dataset a config section names, built once per process and shared by every stage that asks.

    Adapters index lazily and keep their indexes (COCO parses each instances JSON once, PASCAL reads each label PNG
    once), so every task of a run in this process reuses one parse. The fold is not part of the dataset: configs
    that differ only in `fold` share it; FSS-1000 configs that pick different trn/val lists (`fss_trainval`) do not.
    """
    trainval = (config.fss_trainval or "lists") if config.name == "fss" else None
    return _open(config.name, config.root, config.toy, trainval, config.coco_layout)


@lru_cache(maxsize=OPEN_DATASETS)
def _open(
    name: str, root: str | None, toy: ToyConfig, fss_trainval: str | None, coco_layout: str | None = None
) -> SegDataset:
    """build_dataset, memoised on what defines the dataset (not the fold)."""
    return build_dataset(name, root, toy, fss_trainval, coco_layout)


def forget_datasets() -> None:
    """Drop the datasets open_dataset keeps, so the next call reads the disk again (a long-lived process, tests)."""
    _open.cache_clear()
