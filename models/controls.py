"""ControlNet condition images from a real shot (DifFSS): the support mask, masked HED edges, and scribbles."""

from __future__ import annotations

import cv2
import numpy as np


def fit_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Return (H, W) with the short side scaled to `short_side`, the aspect kept, both rounded to `multiple`."""
    scale = short_side / min(height, width)
    return tuple(max(multiple, int(round(side * scale / multiple)) * multiple) for side in (height, width))  # type: ignore[return-value]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to (H, W) with nearest-neighbour sampling."""
    return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to (H, W) (area filter when shrinking, bilinear when enlarging)."""
    shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def mask_condition(mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Return the mask condition: `color` on the foreground, black elsewhere (H, W, 3 uint8)."""
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[mask] = color
    return out


def hed_edges(hed, image: np.ndarray) -> np.ndarray:
    """Return controlnet-aux HED edges of an RGB image as (H, W) uint8, at the image's own size."""
    h, w = image.shape[:2]
    edges = hed(image, detect_resolution=min(h, w), image_resolution=min(h, w), output_type="np")
    edges = np.asarray(edges)[..., 0] if np.asarray(edges).ndim == 3 else np.asarray(edges)
    if edges.shape != (h, w):  # the annotator rounds sides to multiples of 64
        edges = cv2.resize(edges, (w, h), interpolation=cv2.INTER_LINEAR)
    return edges.astype(np.uint8)


def masked_edges(edges: np.ndarray, mask: np.ndarray, dilation: int) -> np.ndarray:
    """Keep edges inside the foreground dilated once by a `dilation`-sized elliptical kernel (DifFSS: 14)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilation, dilation))
    keep = cv2.dilate(mask.astype(np.uint8), kernel, iterations=1).astype(bool)
    return np.where(keep, edges, 0).astype(np.uint8)


def scribble(masked: np.ndarray) -> np.ndarray:
    """Binarise masked edges into a scribble: > 127 becomes 255, the rest 0 (DifFSS)."""
    return np.where(masked > 127, 255, 0).astype(np.uint8)


def control_image(kind: str, image: np.ndarray, mask: np.ndarray, hed, color, dilation: int, what: str) -> np.ndarray:
    """Return the (H, W, 3) uint8 condition of one kind for a shot already at generation size.

    An empty condition (no foreground, or no edge inside it) is an error naming `what` (the shot and kind):
    a ControlNet given a black image generates an unconditioned picture with a mask that no longer fits.
    """
    if not mask.any():
        raise ValueError(f"{what}: the support mask is empty at generation size {mask.shape}; no {kind} condition")
    if kind == "mask":
        cond = mask_condition(mask, color)
    elif kind in ("hed", "scribble"):
        if hed is None:
            raise ValueError(
                f"{what}: the {kind} condition needs the HED annotator (diffusion.controlnet.hed_annotator)"
            )
        edges = masked_edges(hed_edges(hed, image), mask, dilation)
        single = scribble(edges) if kind == "scribble" else edges
        cond = np.repeat(single[..., None], 3, axis=2)
    else:
        raise ValueError(f"{what}: unknown control kind {kind!r}; expected mask, hed or scribble")
    if not cond.any():
        raise ValueError(f"{what}: the {kind} control image is empty (all black): no edge inside the support mask")
    return cond
