"""Export a split's instances as a COCO-format instances JSON (pycocotools RLE), e.g. ground truth for COCOeval."""

from __future__ import annotations

import json
from pathlib import Path

from pycocotools import mask as mask_utils

from maskforge.eval.datasets.base import DatasetError, SegDataset
from maskforge.eval.instances import encode_rle
from maskforge.storage.fs import atomic_write_bytes


def coco_json(dataset: SegDataset, split: str, image_ids: list[str] | None = None) -> dict:
    """Return the COCO instances dict of a split (or of the listed images of it).

    images: id = 1-based rank of the image in sorted image id order (of the exported images), file_name = the
    dataset's image id, height, width. annotations: id 1-based in image then instance order, category_id = the
    maskforge class id, segmentation = compressed RLE (counts as str) of the instance's visible pixels, area and bbox
    from pycocotools (area, toBbox), iscrowd. categories: every class of dataset.classes(). A split whose exported
    images hold no instance at all (semantic-only datasets: PASCAL, FSS-1000) is a DatasetError.
    """
    ids = _selected_ids(dataset, split, image_ids)
    images: list[dict] = []
    annotations: list[dict] = []
    for rank, image_id in enumerate(ids, start=1):
        record = dataset.load(image_id)
        height, width = (int(v) for v in record.label.shape)
        images.append({"id": rank, "file_name": image_id, "height": height, "width": width})
        for inst in record.instances:
            rle = encode_rle(inst.mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": rank,
                    "category_id": int(inst.class_id),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(bool(inst.iscrowd)),
                }
            )
    if not annotations:
        raise DatasetError(
            f"{dataset.name}: the {len(ids)} exported image(s) of split {split!r} hold no instance annotations; "
            "expected a dataset with instances (toy, coco), not a semantic-only one (pascal, fss)"
        )
    return {
        "info": {"description": f"maskforge {dataset.name} {split} instances", "dataset": dataset.name, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in sorted(dataset.classes().items())],
    }


def write_coco_json(
    dataset: SegDataset, split: str, path: str | Path, image_ids: list[str] | None = None
) -> dict[str, int | str]:
    """Write coco_json(...) to `path` atomically (readers see the old file or the whole new one); return
    {"images": count, "annotations": count, "path": path}."""
    data = coco_json(dataset, split, image_ids)
    atomic_write_bytes(str(path), json.dumps(data).encode("utf-8"))
    return {"images": len(data["images"]), "annotations": len(data["annotations"]), "path": str(path)}


def _selected_ids(dataset: SegDataset, split: str, image_ids: list[str] | None) -> list[str]:
    """Return the sorted ids to export: the whole split, or `image_ids` checked to be unique members of it."""
    split_ids = dataset.image_ids(split)  # an unknown split is the adapter's DatasetError
    if image_ids is None:
        return sorted(split_ids)
    if not image_ids:
        raise DatasetError(f"{dataset.name}: image_ids is empty; expected at least one image id of split {split!r}")
    members = set(split_ids)
    unknown = [i for i in image_ids if i not in members]
    if unknown:
        raise DatasetError(f"{dataset.name}: image id {unknown[0]!r} is not in split {split!r}")
    if len(set(image_ids)) != len(image_ids):
        twice = next(i for i in image_ids if image_ids.count(i) > 1)
        raise DatasetError(f"{dataset.name}: image id {twice!r} is listed twice; expected unique image ids")
    return sorted(image_ids)
