"""TFA's COCO image lists over the COCO 2014 layout: "trainval35k" (train2014 + val2014 minus minival) for base
training and K-shot sets, "minival" (5k val2014 images) for evaluation.

TFA trains on cocosplit/datasplit/trainvalno5k.json and tests on 5k.json (ucbdrive/few-shot-object-detection 148a039,
fsdet/data/builtin.py:86-98). Both are unions and subsets of COCO 2014's two instances files, so maskforge reads
those (eval/datasets/coco.py) and takes the 5k minival image ids from one of two files the user has:

    <root>/annotations/instances_minival2014.json   (Detectron's minival; `minival: instances_minival2014`)
    <root>/annotations/instances_val2017.json       (COCO 2017 val: the same 5k images, same ids; `minival: val2017`)

Only the "images" list of that file is read. Image ids stay CocoDataset's ("val2014/COCO_val2014_<12 digits>").
"""

from __future__ import annotations

import json
from pathlib import Path

from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.coco import CocoDataset
from maskforge.eval.instances import Instance

#: TFA's split names.
TFA_SPLITS: tuple[str, ...] = ("trainval35k", "minival")
#: Where the minival image ids come from (config tfa.minival) -> the annotations file holding them.
MINIVAL_FILES: dict[str, str] = {
    "instances_minival2014": "instances_minival2014.json",
    "val2017": "instances_val2017.json",
}
#: Images in COCO's 5k minival (= val2017).
MINIVAL_IMAGES = 5000


def read_minival_ids(root: str | Path, source: str) -> frozenset[int]:
    """Return the COCO image ids of the minival file `source` names (MINIVAL_FILES); a missing or malformed file is
    a DatasetError naming it and what to add."""
    if source not in MINIVAL_FILES:
        raise DatasetError(f"coco tfa: minival source {source!r}; expected one of {list(MINIVAL_FILES)}")
    path = Path(root) / "annotations" / MINIVAL_FILES[source]
    if not path.is_file():
        other = next(k for k in MINIVAL_FILES if k != source)
        raise DatasetError(
            f"coco tfa: {path} not found; TFA's minival image list needs it (COCO's {MINIVAL_FILES[source]}), or set "
            f"tfa.minival: {other} if you have annotations/{MINIVAL_FILES[other]}"
        )
    try:
        data = json.loads(path.read_text())
        ids = frozenset(int(img["id"]) for img in data["images"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"coco tfa: {path}: cannot read its image ids ({type(err).__name__}: {err})") from None
    if not ids:
        raise DatasetError(f"coco tfa: {path} lists no image; expected COCO's {MINIVAL_IMAGES} minival images")
    return ids


class TfaCocoDataset(SegDataset):
    """COCO 2014 seen through TFA's image lists: splits "trainval35k" and "minival" of one CocoDataset."""

    name = "coco"

    def __init__(self, coco: CocoDataset, minival_ids: frozenset[int], source: str = "instances_minival2014") -> None:
        """Split `coco` (the 2014 layout) by the COCO image ids of minival (read_minival_ids); `source` is recorded."""
        if coco.year != "2014":
            raise DatasetError(
                f"coco tfa: TFA's image lists are over COCO 2014 (train2014 + val2014); dataset.coco_layout gives "
                f"{coco.year}; use instances2014"
            )
        self.coco, self.minival_ids, self.source = coco, minival_ids, source
        self._ids: dict[str, list[str]] = {}

    def classes(self) -> dict[int, str]:
        """Return COCO's 80 classes (contiguous ids)."""
        return self.coco.classes()

    def splits(self) -> tuple[str, ...]:
        """Return ("trainval35k", "minival")."""
        return TFA_SPLITS

    def image_ids(self, split: str) -> list[str]:
        """Return the sorted image ids of a TFA split: minival = val2014 images whose COCO id is in the minival file;
        trainval35k = every train2014 image and the other val2014 ones."""
        if split not in TFA_SPLITS:
            raise DatasetError(f"coco tfa: unknown split {split!r}; expected one of {TFA_SPLITS}")
        if split not in self._ids:
            val = self.coco.image_ids("val")
            coco_id = self.coco._split("val").coco_id
            minival = [i for i in val if coco_id[i] in self.minival_ids]
            if len(minival) != len(self.minival_ids):
                raise DatasetError(
                    f"coco tfa: {len(self.minival_ids)} minival ids ({self.source}), {len(minival)} of them in "
                    f"{self.coco.ann_files['val']}; expected every minival image among val2014's"
                )
            held = set(minival)
            self._ids["minival"] = minival
            self._ids["trainval35k"] = sorted(self.coco.image_ids("train") + [i for i in val if i not in held])
        return list(self._ids[split])

    def load(self, image_id: str) -> ImageRecord:
        """Decode an image of either split (CocoDataset.load)."""
        return self.coco.load(image_id)

    def load_instances(self, image_id: str) -> tuple[Instance, ...]:
        """Return an image's instances without reading its JPEG (CocoDataset.load_instances)."""
        return self.coco.load_instances(image_id)

    def annotation_ids(self, image_id: str) -> tuple[int, ...]:
        """Return the COCO annotation ids of load_instances(image_id), in order."""
        return self.coco.annotation_ids(image_id)

    def coco_image_id(self, image_id: str) -> int:
        """Return the COCO image id of a maskforge image id."""
        split = "train" if image_id.startswith("train") else "val"
        return self.coco._split(split).coco_id[image_id]

    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {class id: sorted image ids of the TFA split with an annotation of it}, from the two JSON indexes."""
        keep = set(self.image_ids(split))
        parts = [self.coco.class_index("val")] + ([self.coco.class_index("train")] if split == "trainval35k" else [])
        return {cid: sorted(i for part in parts for i in part.get(cid, ()) if i in keep) for cid in self.classes()}
