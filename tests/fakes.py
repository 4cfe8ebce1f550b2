"""Builders of tiny on-disk dataset layouts (PASCAL VOC, COCO instances, FSS-1000) for the adapter tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

#: COCO's 80 thing-category ids: 1..90 without the 10 ids the 2014/2017 releases leave unused.
COCO_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in COCO_UNUSED_IDS)


def write_jpeg(
    path: Path, width: int, height: int, rgb: tuple[int, int, int] = (120, 60, 200), mode: str = "RGB"
) -> Path:
    """Write a flat-colour JPEG of the given size (mode "L" writes a greyscale JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (width, height), rgb)
    img.convert(mode).save(path, quality=95)
    return path


def write_noise_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """Write a random-noise JPEG: its scan data dwarfs the header, so cutting its tail leaves the header readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def write_png(path: Path, values: np.ndarray, mode: str = "L") -> Path:
    """Write a uint8 array as a PNG (mode "L", "P" or "RGB" for an (H, W, 3) array)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(values, dtype=np.uint8)
    if mode == "P":  # palette indices are the values (as VOC's own SegmentationClass PNGs)
        img = Image.new("P", (arr.shape[1], arr.shape[0]))
        img.putdata(arr.ravel().tolist())
        img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    else:
        img = Image.fromarray(arr)
    img.save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


# --- PASCAL ---------------------------------------------------------------------------------------------------


def pascal_labels() -> dict[str, np.ndarray]:
    """Four uint8 label maps (values as on disk: 0..20, 255 boundary) keyed by VOC id."""
    a = np.zeros((16, 20), np.uint8)
    a[2:8, 3:10] = 1  # aeroplane
    a[8, 3:10] = 255  # boundary
    a[10:14, 12:18] = 15  # person
    b = np.zeros((24, 18), np.uint8)
    b[5:20, 4:9] = 2  # bicycle
    c = np.zeros((32, 40), np.uint8)
    c[0:4, 0:4] = 1
    c[20:30, 30:40] = 20  # tvmonitor
    c[19, 30:40] = 255
    d = np.zeros((16, 16), np.uint8)  # background only
    return {"2007_000001": a, "2007_000002": b, "2008_000003": c, "2008_000004": d}


PASCAL_VAL = ("2007_000001", "2007_000002")


def make_pascal(tmp: Path, parent: bool = False, extra_jpeg: bool = True) -> Path:
    """Write a VOC2012 layout; return the VOC2012 folder, or its parent when `parent` is set."""
    voc = tmp / "VOC2012"
    for image_id, label in pascal_labels().items():
        h, w = label.shape
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", w, h)
        write_png(voc / "SegmentationClassAug" / f"{image_id}.png", label)
    if extra_jpeg:  # VOC has JPEGs without Aug labels; they belong to no split
        write_jpeg(voc / "JPEGImages" / "2009_000005.jpg", 12, 12)
    seg = voc / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True, exist_ok=True)
    (seg / "val.txt").write_text("".join(f"{i}\n" for i in PASCAL_VAL))
    return tmp if parent else voc


# --- COCO -----------------------------------------------------------------------------------------------------


def coco_categories() -> list[dict]:
    """The 80 COCO categories with their real ids and names."""
    from maskforge.eval.folds import COCO_CLASSES

    return [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]


def rle(mask: np.ndarray) -> dict:
    """Compressed RLE of a boolean mask, JSON-ready (counts as str)."""
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in enc["size"]], "counts": enc["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Uncompressed (list-of-counts) RLE of a boolean mask: column-major runs starting with zeros (as COCO crowds)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def box(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    """A boolean mask of shape (h, w) that is True on rows x cols."""
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


def coco_spec() -> dict[str, dict]:
    """Images and annotations of a tiny COCO 2014: train has 2 images (one unannotated), val 1 crowd-only image."""
    dog = box(32, 40, slice(10, 15), slice(10, 30))
    crowd = box(32, 40, slice(12, 32), slice(25, 40))
    bike_crowd = box(20, 24, slice(5, 10), slice(0, 6))
    train = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 32, "width": 40},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 16, "width": 16},
        ],
        "annotations": [
            # person polygon: rows 0..19, cols 0..19 (area 400)
            {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400.0,
             "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]], "bbox": [0, 0, 20, 20]},
            # dog RLE over the person (area 100): smaller, so it wins the overlap
            {"id": 102, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 100.0,
             "segmentation": rle(dog), "bbox": [10, 10, 20, 5]},
            # toothbrush crowd (uncompressed RLE), partly under the dog
            {"id": 103, "image_id": 1, "category_id": 90, "iscrowd": 1, "area": float(crowd.sum()),
             "segmentation": uncompressed_rle(crowd), "bbox": [25, 12, 15, 20]},
            # cat with zero area: not indexed, paints nothing
            {"id": 104, "image_id": 1, "category_id": 17, "iscrowd": 0, "area": 0.0,
             "segmentation": rle(np.zeros((32, 40), bool)), "bbox": [0, 0, 0, 0]},
        ],
    }  # fmt: skip
    val = {
        "images": [{"id": 3, "file_name": "COCO_val2014_000000000003.jpg", "height": 20, "width": 24}],
        "annotations": [
            {"id": 201, "image_id": 3, "category_id": 2, "iscrowd": 1, "area": float(bike_crowd.sum()),
             "segmentation": uncompressed_rle(bike_crowd), "bbox": [0, 5, 6, 5]},
        ],
    }  # fmt: skip
    return {"train": train, "val": val}


def write_coco_json(path: Path, spec: dict, categories: list[dict] | None = None) -> Path:
    """Write one instances JSON from a spec with images and annotations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"info": {}, "licenses": [], "categories": categories or coco_categories(), **spec}
    path.write_text(json.dumps(data))
    return path


def make_coco(tmp: Path, spec: dict[str, dict] | None = None, write_images: bool = True) -> Path:
    """Write annotations/instances_{train,val}2014.json and the listed JPEGs; return the root."""
    spec = spec or coco_spec()
    for split, part in spec.items():
        write_coco_json(tmp / "annotations" / f"instances_{split}2014.json", part)
        (tmp / f"{split}2014").mkdir(parents=True, exist_ok=True)
        if write_images:
            for img in part["images"]:
                write_jpeg(tmp / f"{split}2014" / img["file_name"], img["width"], img["height"])
    return tmp


# --- FSS-1000 -------------------------------------------------------------------------------------------------

#: A miniature class table: trn / val / test folder names (ids: sorted trn, sorted val, sorted test).
FSS_SPLITS = {"trn": ("bee", "ant", "cat_toy"), "val": ("egg", "dog_bowl"), "test": ("fan", "abe's_flyingfish")}


def fss_mask(h: int, w: int, fg: slice, value: int = 255) -> np.ndarray:
    """A grey-level mask with `value` on rows `fg` and 0 elsewhere."""
    m = np.zeros((h, w), np.uint8)
    m[fg, :] = value
    return m


def make_fss(tmp: Path, splits: dict[str, tuple[str, ...]] | None = None, images_per_class: int = 2) -> Path:
    """Write <class>/<n>.jpg + <n>.png for every class; masks are 255 on their top half (egg/2 is empty)."""
    splits = splits or FSS_SPLITS
    for names in splits.values():
        for name in names:
            for n in range(1, images_per_class + 1):
                write_jpeg(tmp / name / f"{n}.jpg", 8, 6)
                value = 0 if (name, n) == ("egg", 2) else 255
                write_png(tmp / name / f"{n}.png", fss_mask(6, 8, slice(0, 3), value))
    return tmp
