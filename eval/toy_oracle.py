"""Toy-world oracle: recognise a toy object's material by hue and its shape by contour, and segment it by colour.

The toy world paints each class in one saturated material colour on a desaturated ground, so hue and saturation
alone segment an object; the shape follows from the segment's solidity and how it fills its enclosing circle. Used
to score generated images, for which no label map exists (the oracle's own accuracy on rendered images is measured in
its tests).
"""

from __future__ import annotations

import cv2
import numpy as np

from maskforge.eval.folds import TOY_MATERIALS

#: OpenCV hue (0..180) of each material's base colour.
MATERIAL_HUE = {"red": 1.0, "green": 66.0, "blue": 113.0, "yellow": 26.0}
#: Least share of a material's painted pixels the object segment must hold: noise scatters paint, an object gathers it.
MIN_GATHERED = 0.5
#: Saturation (0..255) above which a pixel counts as painted (the ground is desaturated).
MIN_SATURATION = 110
MIN_VALUE = 40


def _hsv(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hsv = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    return hsv[..., 0].astype(np.float32), hsv[..., 1], hsv[..., 2]


def _hue_distance(hue: np.ndarray, centre: float) -> np.ndarray:
    d = np.abs(hue - centre)
    return np.minimum(d, 180.0 - d)  # hue is circular


def material_map(image: np.ndarray) -> np.ndarray:
    """Return per pixel the index of the nearest material hue (into TOY_MATERIALS), -1 where not painted."""
    hue, sat, val = _hsv(image)
    dists = np.stack([_hue_distance(hue, MATERIAL_HUE[m]) for m in TOY_MATERIALS])
    nearest = dists.argmin(0)
    painted = (sat >= MIN_SATURATION) & (val >= MIN_VALUE) & (dists.min(0) <= 14)
    return np.where(painted, nearest, -1)


def dominant_material(image: np.ndarray) -> str | None:
    """Return the material covering most painted pixels, or None when under 1 % of the image is painted."""
    mats = material_map(image)
    counts = np.bincount(mats[mats >= 0].ravel(), minlength=len(TOY_MATERIALS))
    if counts.sum() < 0.01 * mats.size:
        return None
    return TOY_MATERIALS[int(counts.argmax())]


def oracle_mask(image: np.ndarray, material: str) -> np.ndarray:
    """Segment the pixels of one material: hue match, then closing (fills texture gaps) and the largest component."""
    if material not in MATERIAL_HUE:
        raise ValueError(f"unknown toy material {material!r}; expected one of {TOY_MATERIALS}")
    raw = (material_map(image) == TOY_MATERIALS.index(material)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    closed = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    if n <= 1:
        return np.zeros(image.shape[:2], bool)
    biggest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    mask = (labels == biggest).astype(np.uint8)
    # fill holes: the blue checks and green dots leave unpainted islands inside the object
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def shape_of(mask: np.ndarray) -> str | None:
    """Classify a segment: star (concave), else disc/square/triangle by how much of its enclosing circle it fills."""
    if mask.sum() < 30:
        return None
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    hull = cv2.contourArea(cv2.convexHull(contour))
    perimeter = cv2.arcLength(contour, True)
    if area <= 0 or hull <= 0 or perimeter <= 0:
        return None
    if area / hull < 0.8:  # the only concave class
        return "star"
    # share of the enclosing circle filled: disc 1, square 2/pi = 0.64, equilateral triangle 0.41
    _, radius = cv2.minEnclosingCircle(contour)
    fill = area / (np.pi * radius**2)
    return "disc" if fill > 0.8 else "square" if fill > 0.52 else "triangle"


def recognise(image: np.ndarray) -> str | None:
    """Return the toy class name ("red disc", ...) the oracle sees in an object photo, or None."""
    material = dominant_material(image)
    if material is None:
        return None
    segment = oracle_mask(image, material)
    painted = material_map(image) == TOY_MATERIALS.index(material)
    if (segment & painted).sum() < MIN_GATHERED * painted.sum():
        return None  # the paint is scattered (noise, texture), not one object
    shape = shape_of(segment)
    return None if shape is None else f"{material} {shape}"
