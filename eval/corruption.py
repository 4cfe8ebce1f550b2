"""Deterministic mask corruptions (dilation, erosion, blobs, shift, holes) that turn true masks into coarse ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Every corruption's `strength` is a fraction of the object's equivalent radius sqrt(area / pi) (0 = no change).


class CorruptionError(ValueError):
    """An unknown corruption kind or a bad strength (the message names it and the accepted values)."""


def object_radius(mask: np.ndarray) -> float:
    """Return the equivalent radius sqrt(area / pi) of a mask's foreground in pixels (1.0 for an empty mask)."""
    area = int(np.count_nonzero(mask))
    return max(1.0, float(np.sqrt(area / np.pi)))


def _pixels(mask: np.ndarray, strength: float) -> int:
    """Return strength x the object's equivalent radius, rounded, at least 1 pixel for a positive strength."""
    if strength < 0:
        raise CorruptionError(f"strength must be >= 0, got {strength}")
    return 0 if strength == 0 else max(1, int(round(strength * object_radius(mask))))


def _disk(radius: int) -> list[tuple[int, int]]:
    """Return the (dy, dx) offsets of a digital disk of a radius."""
    r = np.arange(-radius, radius + 1)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    keep = yy**2 + xx**2 <= radius * radius + radius  # the +radius rounds the disk's edge outwards
    return list(zip(yy[keep].tolist(), xx[keep].tolist()))


def _shifted(mask: np.ndarray, dy: int, dx: int, fill: bool) -> np.ndarray:
    """Return mask translated by (dy, dx) with `fill` in the uncovered border."""
    h, w = mask.shape
    out = np.full_like(mask, fill)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _morph(mask: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    """Binary dilation (grow) or erosion by a disk of a radius; outside the image counts as background."""
    out = mask.copy()
    for dy, dx in _disk(radius):
        moved = _shifted(mask, dy, dx, False)
        out = out | moved if grow else out & moved
    return out


def _disc_mask(shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    """Return a boolean filled disc on a canvas of a shape."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius


def dilate(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Grow the mask by a disk of strength x its radius (rng unused: dilation is deterministic)."""
    mask = np.asarray(mask, bool)
    return _morph(mask, _pixels(mask, strength), grow=True) if strength else mask.copy()


def erode(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Shrink the mask by a disk of strength x its radius (may empty a thin object; rng unused)."""
    mask = np.asarray(mask, bool)
    return _morph(mask, _pixels(mask, strength), grow=False) if strength else mask.copy()


def shift(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Translate the mask by strength x its radius in a random direction (the border fills with background)."""
    mask = np.asarray(mask, bool)
    distance = _pixels(mask, strength)
    if distance == 0:
        return mask.copy()
    angle = rng.uniform(0, 2 * np.pi)
    return _shifted(mask, int(round(distance * np.sin(angle))), int(round(distance * np.cos(angle))), False)


def blobs(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Add 1-3 random discs of radius strength x the object's radius, centred anywhere in the image."""
    mask = np.asarray(mask, bool)
    radius = _pixels(mask, strength)
    out = mask.copy()
    if radius == 0:
        return out
    h, w = mask.shape
    for _ in range(int(rng.integers(1, 4))):
        out |= _disc_mask(mask.shape, rng.uniform(0, h), rng.uniform(0, w), radius)
    return out


def holes(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Cut 1-3 discs of radius strength x the object's radius centred on random foreground pixels."""
    mask = np.asarray(mask, bool)
    radius = _pixels(mask, strength)
    out = mask.copy()
    ys, xs = np.nonzero(mask)
    if radius == 0 or len(ys) == 0:
        return out
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(ys)))
        out &= ~_disc_mask(mask.shape, ys[k], xs[k], radius)
    return out


#: Corruption kinds by name, applied by `corrupt` in the order given.
CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator, float], np.ndarray]] = {
    "dilate": dilate,
    "erode": erode,
    "blobs": blobs,
    "shift": shift,
    "holes": holes,
}


def corrupt(
    mask: np.ndarray, rng: np.random.Generator, *kinds: str | tuple[str, float], strength: float = 0.3
) -> np.ndarray:
    """Apply corruptions in order; each kind is a name (at `strength`) or (name, strength); same rng, same mask."""
    out = np.asarray(mask, bool).copy()
    for kind in kinds:
        name, level = (kind, strength) if isinstance(kind, str) else kind
        if name not in CORRUPTIONS:
            raise CorruptionError(f"unknown corruption {name!r}; expected one of {sorted(CORRUPTIONS)}")
        # the object's radius is taken from the mask as it is now, so later kinds see earlier ones' result
        out = CORRUPTIONS[name](out, rng, float(level))
    return out
