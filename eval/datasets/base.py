"""The dataset-adapter contract: every on-disk or procedural dataset yields images, label maps and class ids."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from maskforge.eval.instances import Instance
from maskforge.storage.yaml_config import ConfigError


class DatasetError(ValueError):
    """Bad dataset input: the message names the file, field or value and what was expected."""


@dataclass(frozen=True)
class ImageRecord:
    """One decoded image of a dataset with its exact label map.

    Attributes:
        image_id: the adapter's id of the image (stable, unique within the dataset, no path separators needed).
        image: uint8 RGB array of shape (H, W, 3).
        label: int32 label map of shape (H, W): 0 background, class ids, tasks.labels.IGNORE for ignored pixels.
        class_ids: sorted ids of the classes with at least one pixel in `label`.
        instances: the image's object instances (visible pixels, class, crowd flag) where the dataset has them
            (toy world, COCO); empty for semantic-only datasets (PASCAL, FSS-1000).
    """

    image_id: str
    image: np.ndarray
    label: np.ndarray
    class_ids: tuple[int, ...] = field(default=())
    instances: tuple[Instance, ...] = field(default=())


class SegDataset(ABC):
    """A segmentation dataset: a class table, image-level splits and an index of images per class."""

    #: Short dataset name used in keys, folds and provenance ("toy", "pascal", "coco", "fss").
    name: str

    @abstractmethod
    def classes(self) -> dict[int, str]:
        """Return {class id: class name} for every class (ids start at 1; 0 is background)."""

    @abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Return the names of the image-level splits this dataset has (e.g. ("train", "val"))."""

    @abstractmethod
    def image_ids(self, split: str) -> list[str]:
        """Return the sorted image ids of a split; an unknown split is a DatasetError."""

    @abstractmethod
    def load(self, image_id: str) -> ImageRecord:
        """Decode one image and its label map; missing, unreadable or mismatched files are a DatasetError."""

    @abstractmethod
    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {class id: sorted image ids of `split` with at least one pixel of that class}.

        Every class id of classes() is a key (possibly with an empty list). Pixel presence, not annotation
        presence, decides membership, so a base set built from it holds no novel pixel.
        """

    def load_instances(self, image_id: str) -> tuple[Instance, ...]:
        """Return an image's instances (as load(image_id).instances); adapters that can skip decoding the image
        override it."""
        return self.load(image_id).instances

    def class_id(self, name_or_id: str | int) -> int:
        """Resolve a class name or id to an id; an unknown one is a DatasetError listing what exists."""
        table = self.classes()
        if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
            cid = int(name_or_id)
            if cid in table:
                return cid
            raise DatasetError(f"{self.name}: unknown class id {cid}; expected one of 1..{max(table)}")
        for cid, cname in table.items():
            if cname == name_or_id:
                return cid
        sample = ", ".join(list(table.values())[:8])
        raise DatasetError(f"{self.name}: unknown class name {name_or_id!r}; expected one of: {sample}, ...")


def check_split(dataset: SegDataset, split: str, field: str) -> None:
    """Raise a ConfigError naming the config `field` unless the dataset has the split (every learner's stages and
    pre-flights check their split fields this way, before any work)."""
    if split not in dataset.splits():
        raise ConfigError(f"{field}: unknown split {split!r} of {dataset.name}; expected one of {dataset.splits()}")
