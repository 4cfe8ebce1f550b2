"""VOC2012 val instances in COCO's class ids: MaskDiff's COCO -> VOC evaluation (the paper's second table).

A detector and mask head trained on COCO (TFA's split, where the 20 VOC classes are the novel ones) are scored on
VOC2012's segmentation val list. VOC's instance masks are read from the original VOC2012 release:

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationObject/<id>.png   instance index per pixel (0 background, 255 boundary)
    VOC2012/SegmentationClass/<id>.png    VOC class per pixel (0..20, 255 boundary)
    VOC2012/ImageSets/Segmentation/val.txt

(SBD's SegmentationClassAug, which the PASCAL-5i adapter reads, has no instances.) Each instance index is one
instance; its class is the VOC class most of its pixels carry, mapped to COCO's contiguous id (eval/folds.py:
VOC_TO_COCO). Boundary pixels (255) become IGNORE in the label map and belong to no instance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.decode import check_same_size, read_index_png, read_rgb
from maskforge.eval.datasets.pascal import resolve_voc_root
from maskforge.eval.folds import COCO_CLASSES, PASCAL_CLASSES, VOC_TO_COCO
from maskforge.eval.instances import Instance
from maskforge.storage.labels import IGNORE, IGNORE_ON_DISK, LABEL_DTYPE, present_classes

#: The one split: VOC2012's segmentation val list.
VOC_VAL = "voc2012-val"  # tasks/maskdiff/config.py:VOC_SPLIT is the same name
#: VOC class id (1..20) -> COCO contiguous class id.
VOC_TO_COCO_ID: dict[int, int] = {
    i + 1: COCO_CLASSES.index(VOC_TO_COCO[name]) + 1 for i, name in enumerate(PASCAL_CLASSES)
}


class VocInCocoDataset(SegDataset):
    """VOC2012 val with instances, labelled with COCO's 80 class ids (only the 20 VOC ones occur)."""

    name = "coco"

    def __init__(self, root: str | Path) -> None:
        """Open a VOC2012 folder (or its parent); missing instance masks are one DatasetError saying what to add."""
        self.root = resolve_voc_root(root)
        needed = {
            "JPEGImages": "the JPEG images",
            "SegmentationObject": "VOC2012's instance masks (SegmentationObject/<id>.png)",
            "SegmentationClass": "VOC2012's class masks (SegmentationClass/<id>.png, not SBD's ...Aug)",
        }
        for folder, what in needed.items():
            if not (self.root / folder).is_dir():
                raise DatasetError(
                    f"voc: {self.root / folder} not found; COCO -> VOC evaluation needs {what}: add the folder from "
                    "VOC2012's trainval release (VOCtrainval_11-May-2012.tar)"
                )
        val_list = self.root / "ImageSets" / "Segmentation" / "val.txt"
        if not val_list.is_file():
            raise DatasetError(f"voc: {val_list} not found; expected VOC2012's segmentation val list")
        self._ids = sorted(line.strip() for line in val_list.read_text().splitlines() if line.strip())
        missing = [i for i in self._ids if not (self.root / "SegmentationObject" / f"{i}.png").is_file()]
        if missing:
            raise DatasetError(
                f"voc: {len(missing)} val image(s) without an instance mask, e.g. "
                f"{self.root / 'SegmentationObject' / (missing[0] + '.png')}; add VOC2012's SegmentationObject/"
            )
        self._index: dict[int, list[str]] | None = None

    def classes(self) -> dict[int, str]:
        """Return COCO's 80 classes (contiguous ids), so a COCO-trained model's ids mean the same here."""
        return {i + 1: name for i, name in enumerate(COCO_CLASSES)}

    def splits(self) -> tuple[str, ...]:
        """Return ("voc2012-val",)."""
        return (VOC_VAL,)

    def image_ids(self, split: str) -> list[str]:
        """Return the sorted VOC ids of the val list."""
        if split != VOC_VAL:
            raise DatasetError(f"voc: unknown split {split!r}; expected {VOC_VAL!r}")
        return list(self._ids)

    def _masks(self, image_id: str) -> tuple[np.ndarray, np.ndarray, Path]:
        """Return (object PNG values, class PNG values, image path) of a val id."""
        if image_id not in self._ids:
            raise DatasetError(f"voc: unknown image id {image_id!r}; expected an id of the val list")
        image_path = self.root / "JPEGImages" / f"{image_id}.jpg"
        objects = read_index_png(self.root / "SegmentationObject" / f"{image_id}.png", "voc")
        classes = read_index_png(self.root / "SegmentationClass" / f"{image_id}.png", "voc")
        check_same_size(
            "voc", self.root / "SegmentationObject" / f"{image_id}.png", objects.shape, "class PNG", classes.shape
        )
        return objects, classes, image_path

    def _label_and_instances(self, objects: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, tuple[Instance, ...]]:
        """Return the COCO-id label map and the instances of one image's VOC PNGs."""
        bad = sorted(set(np.unique(classes).tolist()) - set(range(21)) - {IGNORE_ON_DISK})
        if bad:
            raise DatasetError(f"voc: class PNG values {bad[:8]}; expected 0..20 or 255")
        table = np.zeros(256, dtype=LABEL_DTYPE)
        for voc, coco in VOC_TO_COCO_ID.items():
            table[voc] = coco
        label = table[classes]
        label[classes == IGNORE_ON_DISK] = IGNORE
        instances = []
        for k in sorted(set(np.unique(objects).tolist()) - {0, IGNORE_ON_DISK}):
            mask = objects == k
            votes = np.bincount(classes[mask], minlength=256)[1:21]
            if votes.sum() == 0:
                continue  # an object index on boundary or background pixels only
            instances.append(Instance(VOC_TO_COCO_ID[int(votes.argmax()) + 1], mask, False))
        return label, tuple(instances)

    def load(self, image_id: str) -> ImageRecord:
        """Decode the JPEG, its COCO-id label map and its instances."""
        objects, classes, image_path = self._masks(image_id)
        image = read_rgb(image_path, "voc")
        check_same_size("voc", image_path, image.shape[:2], "instance PNG", objects.shape)
        label, instances = self._label_and_instances(objects, classes)
        return ImageRecord(image_id, image, label, present_classes(label), instances)

    def load_instances(self, image_id: str) -> tuple[Instance, ...]:
        """Return an image's instances from its PNGs (the JPEG is not read)."""
        objects, classes, _ = self._masks(image_id)
        return self._label_and_instances(objects, classes)[1]

    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {COCO class id: val ids with an instance of it}, reading every instance PNG once."""
        ids = self.image_ids(split)
        if self._index is None:
            index: dict[int, list[str]] = {cid: [] for cid in self.classes()}
            for image_id in ids:
                for cid in sorted({inst.class_id for inst in self.load_instances(image_id)}):
                    index[cid].append(image_id)
            self._index = index
        return {cid: list(v) for cid, v in self._index.items()}
