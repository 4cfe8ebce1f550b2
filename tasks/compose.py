"""Stage 3, compose scenes: copy-paste pool objects onto base images (AlignDiff §3.5 and D.2)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from maskforge.eval.instances import Instance, clip_to_label, instances_from_owner, occlude
from maskforge.tasks.config import CopyPasteConfig
from maskforge.tasks.objects import PoolObject

#: An object is never pasted with a short side below this many pixels (or its native size, if smaller),
#: so a small drawn scale cannot erase it; documented in docs/generation.md ("Configuration", copy-paste detail).
MIN_PASTE_SIDE = 8


@dataclass(frozen=True)
class Placement:
    """Where one object goes: its index in the pool, the drawn scale, and the pasted box (pixels)."""

    object_index: int
    scale: float
    top: int
    left: int
    height: int
    width: int

    def to_dict(self) -> dict:
        """Return a JSON-compatible dict for sample provenance."""
        return asdict(self)


def sample_placements(
    rng: np.random.Generator, pool: list[PoolObject], base_hw: tuple[int, int], cfg: CopyPasteConfig
) -> list[Placement]:
    """Draw 1..N objects, each with scale U[scale_min, scale_max] of its size (clamped to fit) and a uniform position.

    No rotation and no colour jitter, as in AlignDiff D.2. The draws happen in a fixed order, so the same
    generator state gives the same placements.
    """
    if not pool:
        raise ValueError("copy-paste needs at least one pool object; the pool is empty")
    H, W = base_hw
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placements = []
    for _ in range(n):
        idx = int(rng.integers(len(pool)))
        h, w = pool[idx].mask.shape
        scale = float(rng.uniform(cfg.scale_min, cfg.scale_max))
        s = min(scale, H / h, W / w)  # clamp so the object fits inside the base image
        s = max(s, min(MIN_PASTE_SIDE, h, w) / min(h, w))
        nh, nw = min(H, max(1, round(h * s))), min(W, max(1, round(w * s)))
        top, left = int(rng.integers(0, H - nh + 1)), int(rng.integers(0, W - nw + 1))
        placements.append(Placement(idx, scale, top, left, nh, nw))
    return placements


def resize_object(obj: PoolObject, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an object's crop (bilinear) and mask (nearest) to (height, width)."""
    image = np.asarray(Image.fromarray(obj.image).resize((width, height), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(obj.mask.astype(np.uint8)).resize((width, height), Image.NEAREST)) > 0
    return image, mask


def paste_objects(
    base_image: np.ndarray, base_label: np.ndarray, pool: list[PoolObject], placements: list[Placement]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Paste objects in order; later objects occlude earlier ones in both the image and the label map.

    Returns the new image, the new label map and, per placement, how many of its pixels stay visible.
    """
    image, label, owner = paste_layers(base_image, base_label, pool, placements)
    return image, label, visible_counts(owner, len(placements))


def paste_instances(
    base_image: np.ndarray,
    base_label: np.ndarray,
    base_instances: Iterable[Instance],
    pool: list[PoolObject],
    placements: list[Placement],
    what: str = "base image",
) -> tuple[np.ndarray, np.ndarray, list[int], list[Instance]]:
    """paste_objects plus the scene's instances, which agree with the returned label map: first the base image's own
    (restricted to the pixels the base label gives their class, then without the pasted-over ones), then one per
    pasted object with its visible pixels, in painting order; emptied or fully hidden instances are dropped.

    `what` names the base image in the error raised for a base instance mask of another size than the label.
    """
    base = clip_to_label(base_instances, base_label, what)
    image, label, owner = paste_layers(base_image, base_label, pool, placements)
    pasted = instances_from_owner(owner, [pool[p.object_index].class_id for p in placements])
    return image, label, visible_counts(owner, len(placements)), occlude(base, owner >= 0) + pasted


def paste_layers(
    base_image: np.ndarray, base_label: np.ndarray, pool: list[PoolObject], placements: list[Placement]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste objects in order and return the image, the label map and the owner map (int32: per pixel the index of
    the placement visible there, -1 where no object was pasted)."""
    if base_image.shape[:2] != base_label.shape:
        raise ValueError(f"base image {base_image.shape[:2]} and label {base_label.shape} differ in size")
    image, label = base_image.copy(), base_label.copy()
    owner = np.full(label.shape, -1, dtype=np.int32)
    for i, p in enumerate(placements):
        obj = pool[p.object_index]
        crop, mask = resize_object(obj, p.height, p.width)
        window = (slice(p.top, p.top + p.height), slice(p.left, p.left + p.width))
        image[window][mask] = crop[mask]
        label[window][mask] = obj.class_id
        owner[window][mask] = i
    return image, label, owner


def visible_counts(owner: np.ndarray, n: int) -> list[int]:
    """Return, for placements 0..n-1, how many pixels of an owner map each one holds (its visible pixels)."""
    return [int(v) for v in np.bincount(owner[owner >= 0].ravel(), minlength=n)[:n]]
