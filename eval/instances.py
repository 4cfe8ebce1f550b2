"""Object instances: a class, its visible pixels and crowd flag; COCO RLE and annotation dicts via pycocotools."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from maskforge.storage.codec import ShardSample
from maskforge.storage.labels import IGNORE


class InstanceError(ValueError):
    """An instance annotation that cannot be used: names the file or sample, the field and what was expected."""


@dataclass(frozen=True)
class Instance:
    """One object: its class id, the boolean mask of its *visible* pixels (occluded ones removed), crowd flag."""

    class_id: int
    mask: np.ndarray
    iscrowd: bool = False

    @property
    def area(self) -> int:
        """Visible pixel count."""
        return int(np.count_nonzero(self.mask))

    @property
    def bbox(self) -> list[float]:
        """COCO box [x, y, width, height] of the visible pixels (pycocotools' toBbox; zeros for an empty mask)."""
        return [float(v) for v in mask_utils.toBbox(encode_rle(self.mask))]

    @property
    def xyxy(self) -> list[float]:
        """The same box as [x1, y1, x2, y2] (pixel edges), as torchvision's detectors and roi_align take it."""
        x, y, w, h = self.bbox
        return [x, y, x + w, y + h]


def encode_rle(mask: np.ndarray) -> dict:
    """Return pycocotools' compressed RLE of a boolean HxW mask as JSON-ready {"size": [h, w], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict, what: str = "instance") -> np.ndarray:
    """Return the boolean mask of a compressed RLE dict; a malformed one is an InstanceError naming `what`."""
    try:
        size, counts = rle["size"], rle["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ValueError(f"size must be [height, width] of positive ints, got {size!r}")
        counts = counts.encode("ascii") if isinstance(counts, str) else counts
        if isinstance(counts, list):  # uncompressed RLE (COCO crowd regions)
            counts = mask_utils.frPyObjects({"size": size, "counts": counts}, *size)["counts"]
        with warnings.catch_warnings():
            # pycocotools' Cython decoder trips NumPy 2's copy-keyword deprecation; the result is unaffected
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            decoded = mask_utils.decode({"size": size, "counts": counts})
    except (KeyError, TypeError, ValueError, UnicodeError) as err:
        raise InstanceError(f"{what}: segmentation is not a valid RLE ({err})") from None
    if decoded.shape != tuple(size):
        raise InstanceError(f"{what}: RLE decodes to {decoded.shape}, its size says {tuple(size)}")
    return decoded.astype(bool)


def instance_to_json(instance: Instance) -> dict:
    """Return the JSON record of an instance: class_id, iscrowd, area, bbox and RLE segmentation (visible pixels)."""
    return {
        "class_id": int(instance.class_id),
        "iscrowd": int(bool(instance.iscrowd)),
        "area": instance.area,
        "bbox": instance.bbox,
        "segmentation": encode_rle(instance.mask),
    }


def instance_from_json(record: dict, shape: tuple[int, int], what: str = "instance") -> Instance:
    """Return the Instance of a JSON record (instance_to_json's format) checked against the image `shape`."""
    if not isinstance(record, dict) or not {"class_id", "segmentation"} <= set(record):
        raise InstanceError(f"{what}: expected an object with class_id and segmentation, got {record!r:.80}")
    mask = decode_rle(record["segmentation"], what)
    if mask.shape != tuple(shape):
        raise InstanceError(f"{what}: mask is {mask.shape}, the image is {tuple(shape)}")
    return Instance(int(record["class_id"]), mask, bool(record.get("iscrowd", 0)))


def instances_from_owner(owner: np.ndarray, class_ids: Iterable[int]) -> list[Instance]:
    """Return one Instance per object of an owner map (pixel -> object index, -1 none): object i's visible pixels
    are where owner == i; objects left with no visible pixel are dropped (nothing of them can be annotated)."""
    out = []
    for i, cid in enumerate(class_ids):
        mask = owner == i
        if mask.any():
            out.append(Instance(int(cid), mask))
    return out


def occlude(instances: Iterable[Instance], cover: np.ndarray) -> list[Instance]:
    """Return the instances with the pixels under `cover` removed (something pasted over them); emptied ones are
    dropped."""
    out = []
    for inst in instances:
        mask = inst.mask & ~cover
        if mask.any():
            out.append(Instance(inst.class_id, mask, inst.iscrowd))
    return out


#: The meta key of a stored sample that holds its instances (a list of instance_to_json records).
INSTANCES_META = "instances"


def _label_pixels(label: np.ndarray, instance: Instance) -> np.ndarray:
    """Return where the label map allows an instance's pixels: its class, and IGNORE too for a crowd instance."""
    allowed = label == instance.class_id
    return allowed | (label == IGNORE) if instance.iscrowd else allowed


def _check_shape(label: np.ndarray, instances: list[Instance], what: str) -> None:
    """Raise InstanceError naming `what` unless every instance mask has the label map's shape."""
    for i, inst in enumerate(instances):
        if inst.mask.shape != label.shape:
            raise InstanceError(f"{what}: instance {i} has a {inst.mask.shape} mask, the label map is {label.shape}")


def clip_to_label(instances: Iterable[Instance], label: np.ndarray, what: str) -> list[Instance]:
    """Return the instances restricted to the pixels the label map gives their class (a crowd one: also IGNORE).

    Overlapping annotations (COCO keeps them as annotated) thus become the pixels the label map shows of each;
    emptied instances are dropped. `what` names the image in the error for a mask of another size.
    """
    instances = list(instances)
    _check_shape(label, instances, what)
    out = []
    for inst in instances:
        mask = inst.mask & _label_pixels(label, inst)
        if mask.any():
            out.append(Instance(inst.class_id, mask, inst.iscrowd))
    return out


def check_label_agreement(label: np.ndarray, instances: Iterable[Instance], what: str) -> None:
    """Raise InstanceError naming `what` unless every instance pixel holds the instance's class in the label map
    (a crowd instance's pixels may also be IGNORE, as COCO's crowd regions are)."""
    instances = list(instances)
    _check_shape(label, instances, what)
    for i, inst in enumerate(instances):
        bad = inst.mask & ~_label_pixels(label, inst)
        if bad.any():
            found = sorted({int(v) for v in np.unique(label[bad])})
            raise InstanceError(
                f"{what}: instance {i} (class {inst.class_id}) has {int(bad.sum())} pixels labelled {found} "
                "in the label map; expected its class on every visible pixel"
            )


def sample_instances(sample: ShardSample) -> list[Instance]:
    """Return the instances of a stored sample (its meta["instances"], instance_to_json records; none when absent),
    each checked against the sample's image size; a bad record is an InstanceError naming the sample key."""
    if INSTANCES_META not in sample.meta:
        return []
    records = sample.meta[INSTANCES_META]
    if not isinstance(records, list):
        raise InstanceError(
            f"sample {sample.key!r}: meta[{INSTANCES_META!r}] must be a list of instance records, "
            f"got {type(records).__name__}"
        )
    shape = tuple(sample.image.shape[:2])
    out = []
    for i, record in enumerate(records):
        what = f"sample {sample.key!r}: {INSTANCES_META}[{i}]"
        if isinstance(record, dict) and "class_id" in record:
            cid = record["class_id"]
            if isinstance(cid, bool) or not isinstance(cid, int) or cid < 1:
                raise InstanceError(f"{what}: class_id must be a positive int, got {cid!r}")
            if record.get("iscrowd", 0) not in (0, 1):
                raise InstanceError(f"{what}: iscrowd must be 0 or 1, got {record['iscrowd']!r}")
        inst = instance_from_json(record, shape, what)
        if not inst.mask.any():
            raise InstanceError(f"{what}: the mask is empty; an instance needs at least one visible pixel")
        if "area" in record and record["area"] != inst.area:
            raise InstanceError(f"{what}: area {record['area']!r} differs from the mask's {inst.area} pixels")
        out.append(inst)
    return out
