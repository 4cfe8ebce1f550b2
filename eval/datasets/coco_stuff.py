"""COCO2017 with COCO-Stuff thing maps, as GAPS reads COCO: 80 thing classes, stuff as background, val2017 (5k).

Expected layout (`dataset.coco_layout: stuffthingmaps2017`):

    <root>/train2017/<12 digits>.jpg            <root>/val2017/<12 digits>.jpg
    label PNGs, either beside the JPEGs (<root>/train2017/<12 digits>.png, GAPS's arrangement) or as the COCO-Stuff
    download unpacks them: <root>/stuffthingmaps_trainval2017/{train2017,val2017}/<12 digits>.png

Every JPEG needs its PNG (same stem, same size). Label values as GAPS maps them (modules/dataset/coco.py:108-117):
the PNG holds COCO category id - 1 for things (0..90), 91..181 for stuff and 255 for unlabelled; things become the
contiguous ids 1..80 (rank of the COCO category id, as the instances adapter), stuff becomes background 0, 255
becomes IGNORE. A thing value of one of the 11 category ids COCO never uses (12, 26, 29, 30, 45, 66, 68, 69, 71, 83,
91; PNG values one less) is a DatasetError naming the file: GAPS's renumbering would silently shift it into its
neighbour.

The class index reads every label PNG of a split once (cached on the instance), as the PASCAL adapter does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.decode import check_same_size, image_size, read_index_png, read_rgb, require_dir
from maskforge.eval.folds import COCO_CLASSES
from maskforge.storage.labels import IGNORE, IGNORE_ON_DISK, LABEL_DTYPE, present_classes

_SPLITS = ("train", "val")
#: The COCO category ids of the 80 thing classes, ascending (1..90 without the 11 unused ones).
UNUSED_CATEGORY_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
THING_CATEGORY_IDS = tuple(c for c in range(1, 91) if c not in UNUSED_CATEGORY_IDS)
#: The folder of the COCO-Stuff download holding {train2017,val2017}/*.png.
STUFF_MAPS = "stuffthingmaps_trainval2017"


def _lookup() -> np.ndarray:
    """Return the 256-entry table raw PNG value -> label: things 1..80, stuff 0, 255 IGNORE, unused ids -2."""
    table = np.zeros(256, dtype=np.int64)  # 91..254: stuff -> background
    table[:91] = -2  # thing values not in THING_CATEGORY_IDS (checked at decode)
    for rank, category in enumerate(THING_CATEGORY_IDS):
        table[category - 1] = rank + 1
    table[IGNORE_ON_DISK] = IGNORE
    return table


_TABLE = _lookup()
assert len(THING_CATEGORY_IDS) == len(COCO_CLASSES) == 80


def label_from_stuff_png(values: np.ndarray, path: Path) -> np.ndarray:
    """Map a COCO-Stuff thing-map PNG's raw values to a label map (things 1..80, stuff 0, 255 IGNORE)."""
    label = _TABLE[values]
    if (label == -2).any():
        bad = sorted({int(v) + 1 for v in np.unique(values[label == -2])})
        raise DatasetError(
            f"coco: label PNG {path} has pixels of COCO category ids {bad[:5]}, which COCO does not use; expected "
            "COCO-Stuff thing maps (value = category id - 1, stuff 91..181, 255 unlabelled)"
        )
    return label.astype(LABEL_DTYPE)


class CocoStuffDataset(SegDataset):
    """COCO2017 images with COCO-Stuff thing maps (GAPS's COCO); splits "train" (train2017) and "val" (val2017)."""

    name = "coco"

    def __init__(self, root: str | Path) -> None:
        """Find each split's JPEGs and their label PNGs (beside them or under stuffthingmaps_trainval2017/)."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"coco: dataset root {self.root} does not exist; expected train2017/ and val2017/")
        self.image_dirs = {
            s: require_dir(self.root / f"{s}2017", self.name, f"COCO2017 {s} images (*.jpg)") for s in _SPLITS
        }
        self.label_dirs: dict[str, Path] = {}
        self._ids: dict[str, list[str]] = {}
        for split, folder in self.image_dirs.items():
            stems = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() == ".jpg")
            beside = folder if any(folder.glob("*.png")) else None
            labels = beside or self.root / STUFF_MAPS / f"{split}2017"
            if not labels.is_dir():
                raise DatasetError(
                    f"coco: no thing-map PNGs for {folder}: neither *.png beside the JPEGs nor {labels}; expected "
                    "COCO-Stuff stuffthingmaps_trainval2017 (dataset.coco_layout: stuffthingmaps2017)"
                )
            pngs = {p.stem for p in labels.iterdir() if p.suffix.lower() == ".png"}
            missing = [s for s in stems if s not in pngs]
            if missing:
                raise DatasetError(
                    f"coco: {len(missing)} image(s) of {folder} have no thing-map PNG in {labels}, e.g. "
                    f"{missing[0]}.png"
                )
            self.label_dirs[split] = labels
            self._ids[split] = [f"{split}2017/{s}" for s in stems]
        self._index: dict[str, dict[int, list[str]]] = {}

    def classes(self) -> dict[int, str]:
        """Return {1: "person", ..., 80: "toothbrush"}."""
        return {i + 1: name for i, name in enumerate(COCO_CLASSES)}

    def splits(self) -> tuple[str, ...]:
        """Return ("train", "val"): train2017 and val2017 (5k images, GAPS's GFSS evaluation split)."""
        return _SPLITS

    def image_ids(self, split: str) -> list[str]:
        """Return sorted ids like "val2017/000000000139" (folder / file stem)."""
        if split not in self._ids:
            raise DatasetError(f"coco: unknown split {split!r}; expected one of {_SPLITS}")
        return list(self._ids[split])

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        folder, _, stem = image_id.partition("/")
        split = folder.removesuffix("2017")
        if split not in self._ids or not stem or folder != f"{split}2017":
            raise DatasetError(f"coco: unknown image id {image_id!r}; expected '<train|val>2017/<file stem>'")
        return self.image_dirs[split] / f"{stem}.jpg", self.label_dirs[split] / f"{stem}.png"

    def load(self, image_id: str) -> ImageRecord:
        """Decode the JPEG and its thing map (stuff background, 255 IGNORE)."""
        image_path, label_path = self._paths(image_id)
        image = read_rgb(image_path, self.name)
        values = read_index_png(label_path, self.name)
        check_same_size(self.name, image_path, image.shape[:2], label_path, values.shape)
        label = label_from_stuff_png(values, label_path)
        return ImageRecord(image_id, image, label, present_classes(label))

    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {class id: image ids with a pixel of it}, reading every label PNG of the split once (cached)."""
        if split not in self._index:
            index: dict[int, list[str]] = {cid: [] for cid in self.classes()}
            for image_id in self.image_ids(split):
                image_path, label_path = self._paths(image_id)
                values = read_index_png(label_path, self.name)
                check_same_size(self.name, image_path, image_size(image_path, self.name), label_path, values.shape)
                present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
                label = label_from_stuff_png(present, label_path)
                for cid in sorted({int(c) for c in label if c > 0}):
                    index[cid].append(image_id)
            self._index[split] = index
        return {cid: list(ids) for cid, ids in self._index[split].items()}
