"""COCO instances adapter (COCO-20i images): 80 thing classes, label maps painted from instance annotations.

Expected layout (year defaults to 2014):

    <root>/annotations/instances_train2014.json
    <root>/annotations/instances_val2014.json
    <root>/train2014/COCO_train2014_<12 digits>.jpg
    <root>/val2014/COCO_val2014_<12 digits>.jpg

Label maps: non-crowd instances are painted in ascending (area, annotation id) order and a pixel keeps the first
instance painted on it, so where instances overlap the smaller object wins. Crowd (iscrowd=1) regions become
IGNORE where no non-crowd instance covers them. Class id = rank of the COCO category id (1..80).

Instances (ImageRecord.instances, in ascending annotation id): each annotation decoded with pycocotools' annToMask
at the image size (polygons, RLE or uncompressed RLE), cut to its *visible* pixels as the label map paints them (the
pixels it keeps against smaller instances; a crowd region: what ends up IGNORE), so instances and label map agree as
in the toy world; an instance left with no pixel is dropped. Crowd annotations stay crowd instances (iscrowd=True).

Bad input (issue 17), decided per case:

- missing field (bbox included), dangling image id, unknown category id, malformed bbox (not 4 numbers): a
  DatasetError when the JSON is parsed, naming the file, the annotation id and the field.
- invalid polygon (an empty polygon list, or a part with fewer than 6 or an odd number of coordinates): neither
  painted nor an instance, counted in `skipped(split)["invalid_polygon"]` when the JSON is parsed (real COCO files
  hold a few degenerate polygons, which pycocotools would read as boxes). A non-numeric or non-finite coordinate is a
  DatasetError when its image is loaded: checking every coordinate at parse time would add seconds to train2014's
  parse, while lengths cost one check per part.
- zero-area box (bbox width or height <= 0): not an instance, counted in `skipped(split)["zero_area_box"]` (known
  once the JSON is parsed). The label map is painted as before, so such an annotation still paints its mask pixels.
- an annotation whose decoded mask is empty although its box is not (a sub-pixel polygon): not an instance, counted
  in `skipped(split)["empty_mask"]` as its image is loaded (per process; loading an image again does not recount).
- an image without annotations: kept, with no instances (a negative image); not counted as a skip.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.decode import check_same_size, read_rgb, require_dir, require_file
from maskforge.eval.folds import COCO_CLASSES
from maskforge.eval.instances import Instance
from maskforge.storage.labels import IGNORE, LABEL_DTYPE, present_classes

_SPLITS = ("train", "val")
_REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
_REQUIRED_ANN_KEYS = ("id", "image_id", "category_id", "area", "iscrowd", "segmentation", "bbox")
_ANN_KEY_SET = frozenset(_REQUIRED_ANN_KEYS)
_NUMBER_TYPES = frozenset((int, float))  # JSON numbers; bool is not one
#: Names of the counted instance skips (see the module docstring), the keys of CocoDataset.skipped().
SKIP_REASONS = ("zero_area_box", "invalid_polygon", "empty_mask")


@dataclass
class _SplitData:
    """One parsed instances file: the pycocotools index and our id maps."""

    coco: COCO
    ids: list[str]  # sorted image ids "<folder>/<file stem>"
    coco_id: dict[str, int]  # image id -> COCO image id
    index: dict[int, list[str]]  # class id -> sorted image ids with a non-empty annotation
    cat_to_cid: dict[int, int]  # COCO category id -> contiguous class id
    skip: dict[int, str]  # annotation id -> parse-time skip reason (zero_area_box: painted, never an instance;
    # invalid_polygon: neither painted nor an instance)
    empty_mask: set[int] = field(default_factory=set)  # annotation ids found to decode to no pixel (at load)


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
        skip: dict[int, str] = {}
        for ann in data["annotations"]:
            reason = _check_annotation(ann, path, id_of, cat_to_cid)
            if reason:
                skip[ann["id"]] = reason
            # Crowd counts too: crowd pixels of a novel class are still novel pixels for base-set filtering.
            if ann["area"] > 0:
                index[cat_to_cid[ann["category_id"]]].add(id_of[ann["image_id"]])
        # Indexed only after validation: pycocotools would fail with a bare KeyError on incomplete entries.
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco.createIndex()
        index_lists = {cid: sorted(v) for cid, v in index.items()}
        return _SplitData(coco, sorted(ids), coco_id, index_lists, cat_to_cid, skip)

    def image_ids(self, split: str) -> list[str]:
        """Return sorted ids like "train2014/COCO_train2014_000000000009" (folder / file stem)."""
        return list(self._split(split).ids)

    def skipped(self, split: str) -> dict[str, int]:
        """Return {reason: annotations of `split` not made instances} for SKIP_REASONS (see the module docstring);
        "empty_mask" grows as images are loaded."""
        data = self._split(split)
        counts = {reason: 0 for reason in SKIP_REASONS}
        for reason in data.skip.values():
            counts[reason] += 1
        return {**counts, "empty_mask": len(data.empty_mask)}

    def load(self, image_id: str) -> ImageRecord:
        """Decode the JPEG, paint its annotations into a label map and list its instances (see the module docstring)."""
        split, info, image_path = self._locate(image_id)
        image = read_rgb(image_path, self.name)
        hw = (int(info["height"]), int(info["width"]))
        # The JSON's height/width define every decoded mask's size, so they must match the JPEG.
        check_same_size(self.name, image_path, image.shape[:2], f"size in {self.ann_files[split]}", hw)
        label, instances = self._paint(split, info, image_path)
        return ImageRecord(image_id, image, label, present_classes(label), instances)

    def load_instances(self, image_id: str) -> tuple[Instance, ...]:
        """Return an image's instances from its annotations alone: the JPEG is not read (a K-shot pool over
        train2014 would otherwise decode 80k images)."""
        split, info, image_path = self._locate(image_id)
        return self._paint(split, info, image_path)[1]

    def annotation_ids(self, image_id: str) -> tuple[int, ...]:
        """Return the COCO annotation id of each of load_instances(image_id), in the same order (TFA's K-shot files
        name annotations, maskforge's K-shot sets name instance positions); the JPEG is not read."""
        split, info, image_path = self._locate(image_id)
        return tuple(ann_id for ann_id, _ in self._paint(split, info, image_path, with_ids=True)[1])

    def _locate(self, image_id: str) -> tuple[str, dict, Path]:
        """Return (split, COCO image entry, JPEG path) of an image id, or a DatasetError naming it."""
        folder, _, _stem = image_id.partition("/")
        if folder not in self._folder_split:
            raise DatasetError(f"coco: unknown image id {image_id!r}; expected '<train|val>{self.year}/<file stem>'")
        split = self._folder_split[folder]
        data = self._split(split)
        if image_id not in data.coco_id:
            raise DatasetError(f"coco: unknown image id {image_id!r}; not listed in {self.ann_files[split]}")
        info = data.coco.imgs[data.coco_id[image_id]]
        return split, info, self.image_dirs[split] / Path(info["file_name"]).name

    def _paint(self, split: str, info: dict, image_path: Path, with_ids: bool = False) -> tuple[np.ndarray, tuple]:
        """Return the label map painted from an image's annotations and its visible-pixel instances (with_ids:
        (annotation id, Instance) pairs)."""
        data = self._split(split)
        hw = (int(info["height"]), int(info["width"]))
        label = np.zeros(hw, dtype=LABEL_DTYPE)
        painted = np.zeros(hw, dtype=bool)
        crowd = np.zeros(hw, dtype=bool)
        anns = sorted(data.coco.imgToAnns[info["id"]], key=lambda a: (a["area"], a["id"]))
        decoded: list[tuple[dict, np.ndarray]] = []
        for ann in anns:
            if data.skip.get(ann["id"]) == "invalid_polygon":
                continue
            mask = self._decode(data.coco, ann, image_path, hw, self.ann_files[split])
            if not mask.any() and ann["id"] not in data.skip:
                data.empty_mask.add(ann["id"])  # decodes to nothing although its box is not empty
            if ann["iscrowd"]:
                crowd |= mask
                decoded.append((ann, mask))  # cut to what stays IGNORE once every instance is painted
                continue
            fresh = mask & ~painted  # first (smallest) instance painted on a pixel keeps it
            label[fresh] = data.cat_to_cid[ann["category_id"]]
            painted |= fresh
            decoded.append((ann, fresh))
        label[crowd & ~painted] = IGNORE
        decoded = [(ann, mask & ~painted if ann["iscrowd"] else mask) for ann, mask in decoded]
        pairs = self._instances(data, decoded)
        return label, pairs if with_ids else tuple(inst for _, inst in pairs)

    @staticmethod
    def _instances(data: _SplitData, decoded: list[tuple[dict, np.ndarray]]) -> tuple[tuple[int, Instance], ...]:
        """Return (annotation id, instance) of an image's visible annotation masks in annotation id order, without
        skips (an annotation hidden entirely by smaller ones has no visible pixel and is dropped, uncounted)."""
        out = []
        for ann, mask in sorted(decoded, key=lambda pair: pair[0]["id"]):
            if ann["id"] in data.skip:
                continue
            if not mask.any():
                continue
            out.append((ann["id"], Instance(data.cat_to_cid[ann["category_id"]], mask, bool(ann["iscrowd"]))))
        return tuple(out)

    def _decode(self, coco: COCO, ann: dict, image_path: Path, hw: tuple[int, int], ann_file: Path) -> np.ndarray:
        """Decode one annotation with pycocotools (polygon, RLE or uncompressed RLE) to a boolean mask."""
        segm = ann["segmentation"]
        if isinstance(segm, list) and not all(_finite(v) for part in segm for v in part):
            bad = next(v for part in segm for v in part if not _finite(v))
            raise DatasetError(
                f"coco: {ann_file}: annotation {ann['id']} field 'segmentation' has polygon coordinate {bad!r}; "
                "expected finite numbers"
            )
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


def _check_annotation(ann: dict, path: Path, id_of: dict[int, str], cat_to_cid: dict[int, int]) -> str | None:
    """Raise a DatasetError naming the file and annotation id when an annotation is incomplete, dangling or has a
    malformed box; return its counted-skip reason ("invalid_polygon", "zero_area_box") or None. A few checks per
    annotation:
    coordinates are checked at load (see the module docstring)."""
    if not _ANN_KEY_SET <= ann.keys():  # a set test: this runs once per annotation of train2014 (~600k)
        missing = [k for k in _REQUIRED_ANN_KEYS if k not in ann]
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
    segm = ann["segmentation"]
    if type(segm) is list:
        for part in segm or (None,):
            if type(part) is not list or len(part) < 6 or len(part) % 2:
                return "invalid_polygon"
    elif type(segm) is not dict:
        raise DatasetError(
            f"coco: {path}: annotation {ann['id']} field 'segmentation' is {type(segm).__name__}; "
            "expected a polygon list or an RLE dict"
        )
    bbox = ann["bbox"]
    # Types first so sum() is a cheap finiteness test of all four (no per-value call: ~600k boxes in train2014).
    if (
        type(bbox) is not list
        or len(bbox) != 4
        or not _NUMBER_TYPES.issuperset(map(type, bbox))
        or not math.isfinite(sum(bbox))
    ):
        raise DatasetError(
            f"coco: {path}: annotation {ann['id']} field 'bbox' is {_short(bbox)}; expected [x, y, width, height] "
            "of finite numbers"
        )
    return "zero_area_box" if bbox[2] <= 0 or bbox[3] <= 0 else None


def _finite(value: object) -> bool:
    """Whether a JSON value is a finite int or float (bool, str and NaN are not)."""
    return type(value) in _NUMBER_TYPES and math.isfinite(value)


def _short(value: object) -> str:
    """A value's repr cut to 60 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
