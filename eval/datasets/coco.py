"""COCO instances adapter (COCO-20i images): 80 thing classes, label maps painted from instance annotations.

Expected layout (year defaults to 2014):

    <root>/annotations/instances_train2014.json
    <root>/annotations/instances_val2014.json
    <root>/train2014/COCO_train2014_<12 digits>.jpg
    <root>/val2014/COCO_val2014_<12 digits>.jpg

Label maps: non-crowd instances are painted in ascending (area, annotation id) order and a pixel keeps the first
instance painted on it, so where instances overlap the smaller object wins. Crowd (iscrowd=1) regions become
IGNORE where no non-crowd instance covers them. Class id = rank of the COCO category id (1..80).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.decode import check_same_size, read_rgb, require_dir, require_file
from maskforge.eval.folds import COCO_CLASSES
from maskforge.storage.labels import IGNORE, LABEL_DTYPE, present_classes

_SPLITS = ("train", "val")
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
_REQUIRED_ANN_KEYS = ("id", "image_id", "category_id", "area", "iscrowd", "segmentation")


@dataclass
class _SplitData:
    """One parsed instances file: the pycocotools index and our id maps."""

    coco: COCO
    ids: list[str]  # sorted image ids "<folder>/<file stem>"
    coco_id: dict[str, int]  # image id -> COCO image id
    index: dict[int, list[str]]  # class id -> sorted image ids with a non-empty annotation
    cat_to_cid: dict[int, int]  # COCO category id -> contiguous class id


class CocoDataset(SegDataset):
    """COCO instances (2014 by default) as 80-class semantic label maps; splits "train" and "val"."""

    name = "coco"

    def __init__(self, root: str | Path, year: str = "2014") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"coco: dataset root {self.root} does not exist; expected a folder with annotations/")
        self.year = str(year)
        ann_dir = require_dir(self.root / "annotations", self.name, f"instances_{{train,val}}{self.year}.json")
        self.ann_files = {
            s: require_file(ann_dir / f"instances_{s}{self.year}.json", self.name, f"COCO {s} instances JSON")
            for s in _SPLITS
        }
        self.image_dirs = {
            s: require_dir(self.root / f"{s}{self.year}", self.name, f"COCO {s} images (*.jpg)") for s in _SPLITS
        }
        self._folder_split = {f"{s}{self.year}": s for s in _SPLITS}
        self._data: dict[str, _SplitData] = {}

    def classes(self) -> dict[int, str]:
        """Return {1: "person", ..., 80: "toothbrush"}; each instances file is checked to list exactly these."""
        return {i + 1: name for i, name in enumerate(COCO_CLASSES)}

    def splits(self) -> tuple[str, ...]:
        """Return ("train", "val")."""
        return _SPLITS

    def _split(self, split: str) -> _SplitData:
        """Parse and validate a split's instances file once (COCO train2014 takes tens of seconds and GBs)."""
        if split not in _SPLITS:
            raise DatasetError(f"coco: unknown split {split!r}; expected one of {_SPLITS}")
        if split not in self._data:
            self._data[split] = self._parse(split)
        return self._data[split]

    def _parse(self, split: str) -> _SplitData:
        path, folder = self.ann_files[split], self.image_dirs[split]
        try:
            with path.open() as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise DatasetError(f"coco: cannot read {path} ({err}); expected a COCO instances JSON") from err
        if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
            raise DatasetError(
                f"coco: {path} is not a COCO instances file; expected keys images, annotations, categories"
            )
        cat_to_cid = _check_categories(data["categories"], path)
        ids: list[str] = []
        coco_id: dict[str, int] = {}
        for img in data["images"]:
            missing_keys = [k for k in _REQUIRED_IMAGE_KEYS if k not in img]
            if missing_keys:
                raise DatasetError(
                    f"coco: {path}: image {img.get('id', '?')} lacks {missing_keys}; expected {_REQUIRED_IMAGE_KEYS}"
                )
            name = Path(img["file_name"]).name
            stem = Path(name).stem
            if "." in stem or not name.lower().endswith(".jpg"):
                raise DatasetError(
                    f"coco: {path}: image file_name {img['file_name']!r}; expected '<stem>.jpg' (no dots)"
                )
            image_id = f"{folder.name}/{stem}"
            if image_id in coco_id:
                raise DatasetError(f"coco: {path} lists {img['file_name']!r} twice; expected unique file names")
            coco_id[image_id] = img["id"]
            ids.append(image_id)
        listed = {Path(img["file_name"]).name for img in data["images"]}
        on_disk = {p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg"}
        missing, extra = sorted(listed - on_disk), sorted(on_disk - listed)
        if missing:
            raise DatasetError(
                f"coco: {path} lists {len(missing)} image(s) missing on disk, e.g. {folder / missing[0]}"
            )
        if extra:
            raise DatasetError(
                f"coco: {len(extra)} image(s) without annotation entry, e.g. {folder / extra[0]}; "
                f"expected every image of {folder} in {path}"
            )

        index: dict[int, set[str]] = {cid: set() for cid in self.classes()}
        id_of = {cid: image_id for image_id, cid in coco_id.items()}
        for ann in data["annotations"]:
            _check_annotation(ann, path, id_of, cat_to_cid)
            # Crowd counts too: crowd pixels of a novel class are still novel pixels for base-set filtering.
            if ann["area"] > 0:
                index[cat_to_cid[ann["category_id"]]].add(id_of[ann["image_id"]])
        # Indexed only after validation: pycocotools would fail with a bare KeyError on incomplete entries.
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco.createIndex()
        return _SplitData(coco, sorted(ids), coco_id, {cid: sorted(v) for cid, v in index.items()}, cat_to_cid)

    def image_ids(self, split: str) -> list[str]:
        """Return sorted ids like "train2014/COCO_train2014_000000000009" (folder / file stem)."""
        return list(self._split(split).ids)

    def load(self, image_id: str) -> ImageRecord:
        """Decode the JPEG and paint its instance masks into a label map (see the module docstring)."""
        folder, _, _stem = image_id.partition("/")
        if folder not in self._folder_split:
            raise DatasetError(f"coco: unknown image id {image_id!r}; expected '<train|val>{self.year}/<file stem>'")
        split = self._folder_split[folder]
        data = self._split(split)
        if image_id not in data.coco_id:
            raise DatasetError(f"coco: unknown image id {image_id!r}; not listed in {self.ann_files[split]}")
        info = data.coco.imgs[data.coco_id[image_id]]
        image_path = self.image_dirs[split] / Path(info["file_name"]).name
        image = read_rgb(image_path, self.name)
        hw = (int(info["height"]), int(info["width"]))
        # The JSON's height/width define every decoded mask's size, so they must match the JPEG.
        check_same_size(self.name, image_path, image.shape[:2], f"size in {self.ann_files[split]}", hw)
        label = np.zeros(hw, dtype=LABEL_DTYPE)
        painted = np.zeros(hw, dtype=bool)
        crowd = np.zeros(hw, dtype=bool)
        anns = sorted(data.coco.imgToAnns[info["id"]], key=lambda a: (a["area"], a["id"]))
        for ann in anns:
            mask = self._decode(data.coco, ann, image_path, hw)
            if ann["iscrowd"]:
                crowd |= mask
                continue
            fresh = mask & ~painted  # first (smallest) instance painted on a pixel keeps it
            label[fresh] = data.cat_to_cid[ann["category_id"]]
            painted |= fresh
        label[crowd & ~painted] = IGNORE
        return ImageRecord(image_id, image, label, present_classes(label))

    def _decode(self, coco: COCO, ann: dict, image_path: Path, hw: tuple[int, int]) -> np.ndarray:
        """Decode one annotation with pycocotools (polygon, RLE or uncompressed RLE) to a boolean mask."""
        try:
            with warnings.catch_warnings():
                # pycocotools' Cython decoder trips NumPy 2's copy-keyword deprecation; the result is unaffected.
                warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
                mask = coco.annToMask(ann).astype(bool)
        except (TypeError, ValueError, KeyError, IndexError) as err:
            raise DatasetError(
                f"coco: annotation {ann['id']} of {image_path}: undecodable segmentation ({err!r}); "
                "expected a polygon list or an RLE dict"
            ) from err
        check_same_size(self.name, image_path, hw, f"annotation {ann['id']}", mask.shape)
        return mask

    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {class id: image ids with an annotation of non-zero area (crowd included)}, from the JSON only."""
        return {cid: list(ids) for cid, ids in self._split(split).index.items()}


def _check_categories(categories: list[dict], path: Path) -> dict[int, int]:
    """Return {COCO category id: contiguous id}, checking the names equal COCO's 80 thing classes in id order."""
    cats = sorted(categories, key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    if names != list(COCO_CLASSES):
        first = next((i for i, (a, b) in enumerate(zip(names, COCO_CLASSES)) if a != b), min(len(names), 80))
        got = names[first] if first < len(names) else "<none>"
        expected = COCO_CLASSES[first] if first < len(COCO_CLASSES) else "<none>"
        raise DatasetError(
            f"coco: {path} has {len(names)} categories that differ from COCO's 80 thing classes: at rank {first + 1} "
            f"got {got!r}, expected {expected!r}"
        )
    return {c["id"]: rank + 1 for rank, c in enumerate(cats)}


def _check_annotation(ann: dict, path: Path, id_of: dict[int, str], cat_to_cid: dict[int, int]) -> None:
    """Raise a DatasetError naming the file and annotation id when an annotation is incomplete or dangling."""
    missing = [k for k in _REQUIRED_ANN_KEYS if k not in ann]
    if missing:
        raise DatasetError(
            f"coco: {path}: annotation {ann.get('id', '?')} lacks {missing}; expected {_REQUIRED_ANN_KEYS}"
        )
    if ann["image_id"] not in id_of:
        raise DatasetError(
            f"coco: {path}: annotation {ann['id']} refers to image id {ann['image_id']}, which is not in 'images'"
        )
    if ann["category_id"] not in cat_to_cid:
        raise DatasetError(
            f"coco: {path}: annotation {ann['id']} has unknown category id {ann['category_id']}; "
            f"expected one of the 80 category ids {sorted(cat_to_cid)[:4]}..{max(cat_to_cid)}"
        )
