"""PASCAL VOC 2012 + SBD (SegmentationClassAug) adapter: "val" is VOC's val list, "train" every other Aug label.

Expected layout (`root` is the VOC2012 folder itself, checked first, or a parent holding `VOC2012/`):

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClassAug/<id>.png      uint8, values 0..20, 255 = boundary (ignored)
    VOC2012/ImageSets/Segmentation/val.txt     one VOC id per line
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import track

from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.decode import (
    check_same_size,
    image_size,
    read_index_png,
    read_rgb,
    require_dir,
    require_file,
)
from maskforge.eval.folds import PASCAL_CLASSES
from maskforge.storage.labels import IGNORE, IGNORE_ON_DISK, LABEL_DTYPE, present_classes

_N_CLASSES = len(PASCAL_CLASSES)
_VALID_VALUES = frozenset(range(_N_CLASSES + 1)) | {IGNORE_ON_DISK}


def resolve_voc_root(root: str | Path) -> Path:
    """Return the VOC2012 folder: `root` itself if it holds JPEGImages/, else `root`/VOC2012."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"pascal: dataset root {base} does not exist; expected the VOC2012 folder or its parent")
    if (base / "JPEGImages").is_dir():
        return base
    if (base / "VOC2012").is_dir():
        return base / "VOC2012"
    raise DatasetError(
        f"pascal: {base} has neither JPEGImages/ nor VOC2012/; expected the VOC2012 folder or a parent holding VOC2012/"
    )


def _label_from_png(values: np.ndarray, path: Path) -> np.ndarray:
    """Map raw PNG values to an in-memory label map (255 -> IGNORE); other out-of-range values are errors."""
    bad = sorted(set(np.unique(values).tolist()) - _VALID_VALUES)
    if bad:
        raise DatasetError(f"pascal: label PNG {path} has values {bad[:8]}; expected 0..{_N_CLASSES} or 255")
    label = values.astype(LABEL_DTYPE)
    label[values == IGNORE_ON_DISK] = IGNORE
    return label


class PascalDataset(SegDataset):
    """PASCAL VOC 2012 with SBD-augmented labels (HSNet's PASCAL-5i images): 20 classes, splits "train" and "val"."""

    name = "pascal"

    def __init__(self, root: str | Path) -> None:
        self.root = resolve_voc_root(root)
        self.image_dir = require_dir(self.root / "JPEGImages", self.name, "VOC JPEG images <id>.jpg")
        self.label_dir = require_dir(
            self.root / "SegmentationClassAug", self.name, "SBD-augmented label PNGs <id>.png (SegmentationClassAug)"
        )
        self.val_list = require_file(
            self.root / "ImageSets" / "Segmentation" / "val.txt", self.name, "VOC's val list (one image id per line)"
        )
        jpgs = {p.stem for p in self.image_dir.glob("*.jpg")}
        pngs = {p.stem for p in self.label_dir.glob("*.png")}
        orphans = sorted(pngs - jpgs)
        if orphans:
            raise DatasetError(
                f"pascal: {len(orphans)} label PNG(s) without an image, e.g. {self.label_dir / (orphans[0] + '.png')}; "
                f"expected {self.image_dir / (orphans[0] + '.jpg')}"
            )
        val = [line.strip() for line in self.val_list.read_text().splitlines() if line.strip()]
        if not val:
            raise DatasetError(f"pascal: {self.val_list} lists no image ids; expected VOC's val list (one id per line)")
        for image_id in val:
            if image_id not in jpgs:
                raise DatasetError(
                    f"pascal: {self.val_list} lists {image_id!r} but {self.image_dir / (image_id + '.jpg')} is missing"
                )
            if image_id not in pngs:
                raise DatasetError(
                    f"pascal: image {self.image_dir / (image_id + '.jpg')} (in val.txt) has no mask; "
                    f"expected {self.label_dir / (image_id + '.png')}"
                )
        self._splits = {"train": sorted(pngs - set(val)), "val": sorted(set(val))}
        self._known = pngs
        self._index: dict[str, dict[int, list[str]]] = {}

    def classes(self) -> dict[int, str]:
        """Return {1: "aeroplane", ..., 20: "tvmonitor"}."""
        return {i + 1: name for i, name in enumerate(PASCAL_CLASSES)}

    def splits(self) -> tuple[str, ...]:
        """Return ("train", "val"): train is SBD trainaug (every Aug label not in val), val is VOC 2012 val."""
        return ("train", "val")

    def image_ids(self, split: str) -> list[str]:
        """Return the sorted VOC ids (e.g. "2007_000032") of a split."""
        if split not in self._splits:
            raise DatasetError(f"pascal: unknown split {split!r}; expected one of {self.splits()}")
        return list(self._splits[split])

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        if image_id not in self._known:
            raise DatasetError(
                f"pascal: unknown image id {image_id!r}; expected a VOC id with a label in {self.label_dir}"
            )
        return self.image_dir / f"{image_id}.jpg", self.label_dir / f"{image_id}.png"

    def load(self, image_id: str) -> ImageRecord:
        """Decode the JPEG and its Aug label (255 boundary pixels become IGNORE)."""
        image_path, label_path = self._paths(image_id)
        image = read_rgb(image_path, self.name)
        values = read_index_png(label_path, self.name)
        check_same_size(self.name, image_path, image.shape[:2], label_path, values.shape)
        label = _label_from_png(values, label_path)
        return ImageRecord(image_id, image, label, present_classes(label))

    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {class id: image ids}, reading every label PNG of the split once (cached on the instance)."""
        if split not in self._index:
            index: dict[int, list[str]] = {cid: [] for cid in self.classes()}
            for image_id in track(self.image_ids(split), description=f"pascal {split}: indexing labels"):
                image_path, label_path = self._paths(image_id)
                values = read_index_png(label_path, self.name)
                check_same_size(self.name, image_path, image_size(image_path, self.name), label_path, values.shape)
                counts = np.bincount(values.ravel(), minlength=256)
                present = set(np.flatnonzero(counts).tolist())
                bad = sorted(present - _VALID_VALUES)
                if bad:
                    raise DatasetError(
                        f"pascal: label PNG {label_path} has values {bad[:8]}; expected 0..{_N_CLASSES} or 255"
                    )
                for cid in sorted(present - {0, IGNORE_ON_DISK}):
                    index[cid].append(image_id)
            self._index[split] = index
        return self._index[split]
