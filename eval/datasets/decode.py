"""Strict file checks and image decoding shared by the on-disk dataset adapters (every failure is a DatasetError)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maskforge.eval.datasets.base import DatasetError

#: What PIL raises for unreadable, truncated or hostile files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def require_dir(path: Path, dataset: str, expected: str) -> Path:
    """Return `path` if it is a directory; otherwise raise a DatasetError naming it and what was expected there."""
    if not path.is_dir():
        raise DatasetError(f"{dataset}: missing directory {path}; expected {expected}")
    return path


def require_file(path: Path, dataset: str, expected: str) -> Path:
    """Return `path` if it is a file; otherwise raise a DatasetError naming it and what was expected there."""
    if not path.is_file():
        raise DatasetError(f"{dataset}: missing file {path}; expected {expected}")
    return path


def _open_decoded(path: Path, dataset: str) -> Image.Image:
    """Open and fully decode an image file, so truncation is found here rather than later."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DatasetError(f"{dataset}: missing file {path}; expected an image file there") from None
    except _DECODE_ERRORS as err:
        raise DatasetError(
            f"{dataset}: unreadable or truncated image {path} ({err}); expected a decodable image"
        ) from err
    return img


def image_size(path: Path, dataset: str) -> tuple[int, int]:
    """Return (height, width) of an image from its header only (cheap: no pixel decoding)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise DatasetError(f"{dataset}: missing file {path}; expected an image file there") from None
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{dataset}: unreadable image {path} ({err}); expected a decodable image") from err
    return height, width


def _decode_as(path: Path, dataset: str, mode: str, what: str) -> np.ndarray:
    """Decode an image of any mode and convert it to `mode` (uint8); `what` names the target in errors."""
    img = _open_decoded(path, dataset)
    try:
        return np.asarray(img.convert(mode), dtype=np.uint8)
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{dataset}: cannot convert {path} (mode {img.mode}) to {what} ({err})") from err


def read_rgb(path: Path, dataset: str) -> np.ndarray:
    """Decode an image of any mode to a uint8 RGB array of shape (H, W, 3)."""
    return _decode_as(path, dataset, "RGB", "RGB")


def read_index_png(path: Path, dataset: str) -> np.ndarray:
    """Decode a single-channel label PNG (mode L or P) to its raw uint8 values, shape (H, W)."""
    img = _open_decoded(path, dataset)
    if img.mode not in ("L", "P"):
        # Converting an RGB label would silently turn colours into wrong class values.
        raise DatasetError(f"{dataset}: label PNG {path} has mode {img.mode}; expected a single-channel (L or P) PNG")
    return np.asarray(img, dtype=np.uint8)


def read_gray(path: Path, dataset: str) -> np.ndarray:
    """Decode a mask image of any mode to uint8 grey levels, shape (H, W)."""
    return _decode_as(path, dataset, "L", "grey levels")


def check_same_size(
    dataset: str, image_path: Path, image_hw: tuple[int, int], mask_path: Path | str, mask_hw: tuple[int, int]
) -> None:
    """Raise a DatasetError naming both files when a mask's (H, W) differs from its image's."""
    if tuple(image_hw) != tuple(mask_hw):
        raise DatasetError(
            f"{dataset}: mask {mask_path} is {mask_hw[1]}x{mask_hw[0]} (WxH) but image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}; expected the same size"
        )
