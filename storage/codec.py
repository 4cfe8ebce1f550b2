"""Sample codec: one ShardSample <-> the WebDataset fields (jpg, mask.png, json, extras) stored for one key."""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from maskforge.storage.labels import BACKGROUND, IGNORE, IGNORE_ON_DISK, LABEL_DTYPE, present_classes

#: Field (member extension) names of the three fields every sample has.
IMAGE_FIELD = "jpg"
LABEL_FIELD = "mask.png"
META_FIELD = "json"
CORE_FIELDS = (IMAGE_FIELD, LABEL_FIELD, META_FIELD)
#: The json entry that maps stored PNG values back to class ids (null when PNG values are the class ids).
LABEL_VALUES = "label_values"

#: Keys: ASCII letters, digits, '_' and '-', in '/'-separated segments. No dots: WebDataset splits a member
#: name at the first dot of its basename, so "img_0.5" would be read back as key "img_0".
KEY_RULE = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
_KEY_RE = re.compile(KEY_RULE)
#: Extra field names: lower case (webdataset lowercases extensions when grouping), ending in .npy or .png.
EXTRA_RULE = r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.(npy|png)$"
_EXTRA_RE = re.compile(EXTRA_RULE)
#: PNG label values 1..254 can hold class ids directly; 0 is background and 255 is ignore.
_MAX_DIRECT_CLASS = 254


class ShardKeyError(ValueError):
    """A sample key that WebDataset cannot store and read back unchanged."""


class ShardCodecError(ValueError):
    """A sample that cannot be encoded, or stored bytes that do not decode to a valid sample."""


@dataclass(eq=False)
class ShardSample:
    """One stored sample: RGB image, int32 label map (0 background, -1 ignore), JSON metadata and extra arrays."""

    key: str
    image: np.ndarray
    label: np.ndarray
    meta: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def validate_key(key: str) -> str:
    """Return key unchanged if WebDataset can round-trip it, else raise ShardKeyError naming the key and rule."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ShardKeyError(
            f"sample key {key!r} does not match {KEY_RULE}: keys use letters, digits, '_' and '-' in "
            "'/'-separated segments; dots are forbidden because WebDataset splits member names at the first dot"
        )
    if key.startswith("__"):
        # tar_file_iterator silently skips members whose name starts with "__...__" (its metadata convention).
        raise ShardKeyError(f"sample key {key!r} starts with '__', which WebDataset readers skip as metadata")
    return key


def canonical_json(obj: Any, what: str) -> str:
    """Return obj as sorted-key JSON, raising ShardCodecError if JSON cannot hold it exactly (NaN, tuples, int keys)."""
    try:
        text = json.dumps(obj, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ShardCodecError(f"{what} is not JSON-serialisable: {exc}") from exc
    # Exactness matters: readers compare metadata, so a tuple silently turning into a list is an error here.
    if json.loads(text) != obj:
        raise ShardCodecError(
            f"{what} changes in a JSON round trip (use lists, str dict keys, plain int/float/str/bool/None): {obj!r}"
        )
    return text


def _check_image(key: str, image: np.ndarray) -> None:
    """Raise ShardCodecError unless image is a uint8 HxWx3 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ShardCodecError(f"sample {key!r}: image must be a uint8 HxWx3 array, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ShardCodecError(f"sample {key!r}: image has an empty side {image.shape}")


def _check_label(key: str, label: np.ndarray, hw: tuple[int, int]) -> None:
    """Raise ShardCodecError unless label is int32 HxW matching the image, holding only -1, 0 and positive ids."""
    if not isinstance(label, np.ndarray) or label.dtype != LABEL_DTYPE or label.ndim != 2:
        got = f"{label.dtype} {label.shape}" if isinstance(label, np.ndarray) else type(label).__name__
        raise ShardCodecError(f"sample {key!r}: label must be an int32 HxW array, got {got}")
    if label.shape != hw:
        raise ShardCodecError(f"sample {key!r}: label shape {label.shape} differs from the image's HxW {hw}")
    if label.size and int(label.min()) < IGNORE:
        raise ShardCodecError(
            f"sample {key!r}: label holds {int(label.min())}; allowed are {IGNORE} (ignore), 0 and class ids"
        )


def _png_bytes(array: np.ndarray) -> bytes:
    """Encode a 2-D uint8 (mode L) or bool (mode 1) array as PNG with fixed settings."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def encode_label(key: str, label: np.ndarray) -> tuple[bytes, dict[str, int] | None]:
    """Return (uint8 PNG bytes, label_values) for an int32 label; label_values is None when PNG values are class ids."""
    classes = present_classes(label)
    if all(1 <= c <= _MAX_DIRECT_CLASS for c in classes):
        stored = label.astype(np.uint8)
        stored[label == IGNORE] = IGNORE_ON_DISK
        return _png_bytes(stored), None
    if len(classes) > _MAX_DIRECT_CLASS:
        raise ShardCodecError(
            f"sample {key!r}: {len(classes)} classes in one label map; a uint8 PNG holds at most {_MAX_DIRECT_CLASS}"
        )
    # Ids above 254 (FSS-1000 has 1000 classes): store 1..n in sorted class order and keep the table in the json.
    stored = np.zeros(label.shape, dtype=np.uint8)
    stored[label == IGNORE] = IGNORE_ON_DISK
    values: dict[str, int] = {}
    for index, class_id in enumerate(classes, start=1):
        stored[label == class_id] = index
        values[str(index)] = class_id
    return _png_bytes(stored), values


def decode_label(key: str, data: bytes, label_values: dict[str, int] | None) -> np.ndarray:
    """Invert encode_label: uint8 PNG bytes (+ label_values) -> int32 label with IGNORE and original class ids."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "L":
            raise ShardCodecError(f"sample {key!r}: {LABEL_FIELD} has PNG mode {img.mode!r}, expected 'L' (uint8)")
        stored = np.array(img)
    lookup = np.full(256, np.iinfo(np.int32).min, dtype=LABEL_DTYPE)
    lookup[BACKGROUND] = BACKGROUND
    lookup[IGNORE_ON_DISK] = IGNORE
    if label_values is None:
        lookup[1 : _MAX_DIRECT_CLASS + 1] = np.arange(1, _MAX_DIRECT_CLASS + 1, dtype=LABEL_DTYPE)
    else:
        for stored_value, class_id in label_values.items():
            if not stored_value.isdigit() or not 1 <= int(stored_value) <= _MAX_DIRECT_CLASS:
                raise ShardCodecError(f"sample {key!r}: {LABEL_VALUES} has invalid PNG value {stored_value!r}")
            lookup[int(stored_value)] = int(class_id)
    label = lookup[stored]
    if (label == np.iinfo(np.int32).min).any():
        bad = sorted(set(np.unique(stored[label == np.iinfo(np.int32).min]).tolist()))
        raise ShardCodecError(f"sample {key!r}: {LABEL_FIELD} holds values {bad} missing from {LABEL_VALUES}")
    return label


def encode_extra(key: str, name: str, array: np.ndarray) -> bytes:
    """Encode one extra array: '.npy' via np.save, '.png' for a 2-D bool (1-bit PNG) or uint8 (8-bit PNG) array."""
    if name in CORE_FIELDS or not _EXTRA_RE.match(name):
        raise ShardCodecError(
            f"sample {key!r}: extra field name {name!r} must match {EXTRA_RULE} and not be one of {CORE_FIELDS}"
        )
    if not isinstance(array, np.ndarray):
        raise ShardCodecError(f"sample {key!r}: extra {name!r} must be a numpy array, got {type(array).__name__}")
    if name.endswith(".npy"):
        if array.dtype.hasobject:
            raise ShardCodecError(f"sample {key!r}: extra {name!r} has dtype object; only numeric arrays are stored")
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return buf.getvalue()
    if array.ndim != 2 or array.dtype not in (np.bool_, np.uint8):
        raise ShardCodecError(
            f"sample {key!r}: extra {name!r} must be a 2-D bool or uint8 array, got {array.dtype} {array.shape}"
        )
    return _png_bytes(np.ascontiguousarray(array))


def decode_extra(key: str, name: str, data: bytes) -> np.ndarray:
    """Invert encode_extra for one stored extra field."""
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if name.endswith(".png"):
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("1", "L"):
                raise ShardCodecError(f"sample {key!r}: extra {name!r} has PNG mode {img.mode!r}, expected '1' or 'L'")
            return np.array(img)
    raise ShardCodecError(
        f"sample {key!r}: stored field {name!r} is not one of {CORE_FIELDS} and not a .npy/.png extra"
    )


def encode_sample(sample: ShardSample, jpeg_quality: int = 95) -> dict[str, Any]:
    """Return the webdataset-ready dict {'__key__', 'jpg', 'mask.png', 'json', extras...} of bytes for one sample."""
    key = validate_key(sample.key)
    if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ShardCodecError(f"jpeg_quality must be an int in 1..100, got {jpeg_quality!r}")
    _check_image(key, sample.image)
    _check_label(key, sample.label, sample.image.shape[:2])
    if not isinstance(sample.meta, dict):
        raise ShardCodecError(f"sample {key!r}: meta must be a dict, got {type(sample.meta).__name__}")
    if LABEL_VALUES in sample.meta:
        raise ShardCodecError(f"sample {key!r}: meta key {LABEL_VALUES!r} is reserved for the label codec")
    mask_png, label_values = encode_label(key, sample.label)
    meta_json = canonical_json({**sample.meta, LABEL_VALUES: label_values}, f"meta of sample {key!r}")
    jpg = io.BytesIO()
    # Fixed encoder settings (4:2:0 chroma, no optimisation, no EXIF) so the same pixels give the same bytes.
    Image.fromarray(np.ascontiguousarray(sample.image)).save(
        jpg, format="JPEG", quality=jpeg_quality, subsampling=2, optimize=False
    )
    fields: dict[str, Any] = {
        "__key__": key,
        IMAGE_FIELD: jpg.getvalue(),
        LABEL_FIELD: mask_png,
        META_FIELD: meta_json.encode("utf-8"),
    }
    for name in sorted(sample.extras):
        fields[name] = encode_extra(key, name, sample.extras[name])
    return fields


@contextmanager
def _member(key: str, where: str, field: str) -> Iterator[None]:
    """Turn a decoder's failure on one member's bytes into a ShardCodecError naming the sample, shard and member."""
    try:
        yield
    except ShardCodecError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as err:
        raise ShardCodecError(f"sample {key!r}{where}: member {field} does not decode ({err})") from None


def decode_sample(fields: dict[str, Any]) -> ShardSample:
    """Invert encode_sample: stored field bytes (as grouped by webdataset, '__*' entries ignored) -> ShardSample.

    A member whose bytes do not decode (a truncated or bit-flipped PNG, JPEG, JSON or npy) is a ShardCodecError
    naming the sample's key, its shard (`__url__`, when the reader gave it) and the member.
    """
    key = fields.get("__key__")
    where = f" in {fields['__url__']}" if "__url__" in fields else ""
    if not isinstance(key, str):
        raise ShardCodecError(f"stored sample{where} has no '__key__' string: fields {sorted(fields)}")
    missing = [name for name in CORE_FIELDS if name not in fields]
    if missing:
        raise ShardCodecError(f"sample {key!r}{where} lacks fields {missing}; present: {sorted(fields)}")
    with _member(key, where, IMAGE_FIELD), Image.open(io.BytesIO(fields[IMAGE_FIELD])) as img:
        if img.mode != "RGB":
            raise ShardCodecError(f"sample {key!r}{where}: {IMAGE_FIELD} has mode {img.mode!r}, expected 'RGB'")
        image = np.array(img)
    try:
        meta = json.loads(fields[META_FIELD])
    except ValueError as exc:
        raise ShardCodecError(f"sample {key!r}{where}: {META_FIELD} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or LABEL_VALUES not in meta:
        raise ShardCodecError(f"sample {key!r}{where}: {META_FIELD} must be an object holding {LABEL_VALUES!r}")
    with _member(key, where, LABEL_FIELD):
        label = decode_label(key, fields[LABEL_FIELD], meta.pop(LABEL_VALUES))
    if label.shape != image.shape[:2]:
        raise ShardCodecError(
            f"sample {key!r}{where}: {LABEL_FIELD} shape {label.shape} differs from {IMAGE_FIELD} HxW {image.shape[:2]}"
        )
    extras = {}
    for name, data in sorted(fields.items()):
        if not name.startswith("__") and name not in CORE_FIELDS:
            with _member(key, where, name):
                extras[name] = decode_extra(key, name, data)
    return ShardSample(key=key, image=image, label=label, meta=meta, extras=extras)
