"""The procedural toy world: textured scenes of coloured shapes with exact label maps and instances, from a seed."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.config import ToyConfig
from maskforge.eval.datasets.toy_variety import extra_look
from maskforge.eval.folds import TOY_CLASSES, TOY_MATERIALS, TOY_SHAPES
from maskforge.eval.instances import Instance, instances_from_owner
from maskforge.eval.seeds import rng_for
from maskforge.storage.labels import BACKGROUND, LABEL_DTYPE, present_classes

#: Base RGB of each material; textures and jitter vary around it.
MATERIAL_RGB = {"red": (205, 40, 35), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40)}
_ID_RE = re.compile(r"^(train|val)_(\d{6})$")


def toy_class_parts(class_id: int) -> tuple[str, str]:
    """Return (shape, material) of a toy class id (1-based, id = 1 + 4 * shape + material)."""
    idx = class_id - 1
    return TOY_SHAPES[idx // len(TOY_MATERIALS)], TOY_MATERIALS[idx % len(TOY_MATERIALS)]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation textured ground: smooth colour noise, a lighting gradient, clutter strokes and grain."""
    base = rng.uniform(70, 190, size=3)
    grey = base.mean()
    base = grey + 0.35 * (base - grey)  # desaturate so class colours stay distinct from the ground
    cells = int(rng.integers(3, 8))
    coarse = rng.normal(0, 22, size=(cells, cells, 3)).astype(np.float32)
    noise = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BICUBIC)) for c in range(3)], -1
    )
    smooth = noise[..., 0]  # the first channel doubles as a brightness field shared by all channels
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 30 * ((np.cos(angle) * xx + np.sin(angle) * yy) - 0.5)
    img = base[None, None, :] + 0.4 * noise + (gradient + 0.3 * smooth)[..., None]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):  # clutter: thin grey-brown strokes, never a class colour
        tone = int(rng.uniform(40, 200))
        colour = (tone, int(tone * rng.uniform(0.85, 1.0)), int(tone * rng.uniform(0.7, 0.95)))
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(canvas, dtype=np.float32)


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    """Rasterise one shape as a boolean mask (hard edges, so the label map is exact)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        if shape == "square":
            radii, n = [r] * 4, 4
        elif shape == "triangle":
            radii, n = [r * 1.15] * 3, 3
        elif shape == "star":  # alternate outer and inner radii
            radii, n = [r * 1.1 if i % 2 == 0 else r * 0.45 for i in range(10)], 10
        elif shape == "hexagon":  # the shapes below only appear with toy.variety > 1 (eval/datasets/toy_variety.py)
            radii, n = [r] * 6, 6
        elif shape == "pentagon":
            radii, n = [r * 1.05] * 5, 5
        elif shape == "diamond":  # a rhombus: long and short half-diagonals
            radii, n = [r * 1.25, r * 0.7, r * 1.25, r * 0.7], 4
        elif shape == "cross":  # a plus sign: 12 corners on two radii
            radii, n = [r * 1.1 if i % 3 == 1 else r * 0.5 for i in range(12)], 12
        else:
            raise ValueError(f"toy: unknown shape {shape!r}")
        pts = [
            (cx + rad * np.cos(theta + 2 * np.pi * i / n), cy + rad * np.sin(theta + 2 * np.pi * i / n))
            for i, rad in enumerate(radii)
        ]
        draw.polygon(pts, fill=255)
    return np.asarray(canvas) > 0


def _material(
    rng: np.random.Generator,
    material: str,
    size: int,
    cx: float,
    cy: float,
    r: float,
    base_rgb: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Texture of one material over the whole canvas: stripes (red), dots (green), checks (blue), shading (yellow);
    `base_rgb` (toy.variety's extra colours) replaces the material's colour, keeping its texture."""
    colour = MATERIAL_RGB[material] if base_rgb is None else base_rgb
    rgb = np.array(colour, dtype=np.float32) * rng.uniform(0.8, 1.15)
    rgb = rgb + rng.normal(0, 8, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = max(3.0, r * rng.uniform(0.35, 0.6))
    if material == "red":
        phi = rng.uniform(0, np.pi)
        pattern = (np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period) > 0).astype(np.float32)
        shade = 1.0 - 0.45 * pattern
    elif material == "green":
        gx, gy = (xx - cx) % period - period / 2, (yy - cy) % period - period / 2
        shade = np.where(gx**2 + gy**2 < (period * 0.28) ** 2, 1.45, 0.9)
    elif material == "blue":
        checks = ((np.floor((xx - cx) / period) + np.floor((yy - cy) / period)) % 2).astype(np.float32)
        shade = 0.8 + 0.45 * checks
    else:
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(r, 1.0)
        shade = 1.15 - 0.35 * np.clip(dist, 0, 1)
    return rgb[None, None, :] * shade[..., None]


def render_scene(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one toy scene: 1-4 objects, varied scale and rotation, later objects occluding earlier ones."""
    image, label, _ = render_scene_instances(seed, split, index, size)
    return image, label


def render_scene_instances(
    seed: int, split: str, index: int, size: int, variety: int = 1
) -> tuple[np.ndarray, np.ndarray, tuple[Instance, ...]]:
    """Render one toy scene (as render_scene, same draws) and its instances: each object's pixels left visible by
    the objects painted after it, in painting order; an object covered entirely is not an instance.

    With variety > 1 each object also draws one of its class's `variety` looks (eval/datasets/toy_variety.py);
    variety 1 draws nothing extra, so the default world's bytes are unchanged."""
    rng = rng_for("toy-scene", seed, split, index)
    image = _background(rng, size)
    label = np.full((size, size), BACKGROUND, dtype=LABEL_DTYPE)
    owner = np.full((size, size), -1, dtype=np.int16)  # pixel -> index of the object painted last on it
    class_ids: list[int] = []
    for i in range(int(rng.integers(1, 5))):
        class_id = int(rng.integers(1, len(TOY_CLASSES) + 1))
        shape, material = toy_class_parts(class_id)
        base_rgb = None
        if variety > 1:
            look = int(rng.integers(variety))
            if look:
                shape, material, base_rgb = extra_look(class_id, look)
        r = rng.uniform(0.09, 0.26) * size
        cx, cy = rng.uniform(0.12, 0.88, size=2) * size
        mask = _shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * np.pi))
        image[mask] = _material(rng, material, size, cx, cy, r, base_rgb)[mask]
        label[mask] = class_id
        owner[mask] = i
        class_ids.append(class_id)
    image += rng.normal(0, 3.0, image.shape)  # sensor grain over everything
    return np.clip(image, 0, 255).astype(np.uint8), label, tuple(instances_from_owner(owner, class_ids))


def render_object(
    seed: int,
    class_id: int,
    index: int,
    size: int,
    radius: tuple[float, float] = (0.22, 0.38),
    centre: tuple[float, float] = (0.38, 0.62),
) -> tuple[np.ndarray, np.ndarray]:
    """Render one object-centric toy photo: a single object of `class_id` on the textured ground, and its mask.

    The training images of the toy diffusion models ("a photo of a {class}"): one object whose radius (share of the
    side) and centre coordinates are uniform in the given ranges (default: large, near the centre), any rotation.
    """
    rng = rng_for("toy-object", seed, class_id, index)
    image = _background(rng, size)
    shape, material = toy_class_parts(class_id)
    r = rng.uniform(*radius) * size
    cx, cy = rng.uniform(*centre, size=2) * size
    mask = _shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * np.pi))
    image[mask] = _material(rng, material, size, cx, cy, r)[mask]
    image += rng.normal(0, 3.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class ToyDataset(SegDataset):
    """Procedural few-shot world: 16 classes (4 shapes x 4 materials), splits "train"/"val", ids like train_000012."""

    name = "toy"

    def __init__(self, config: ToyConfig | None = None) -> None:
        self.config = config or ToyConfig()
        self._index: dict[str, dict[int, list[str]]] = {}

    def classes(self) -> dict[int, str]:
        """Return {id: name}, e.g. {1: "red disc", 2: "green disc", ...}."""
        return {i + 1: name for i, name in enumerate(TOY_CLASSES)}

    def splits(self) -> tuple[str, ...]:
        """Return ("train", "val")."""
        return ("train", "val")

    def _count(self, split: str) -> int:
        if split == "train":
            return self.config.n_train
        if split == "val":
            return self.config.n_val
        raise DatasetError(f"toy: unknown split {split!r}; expected one of {self.splits()}")

    def image_ids(self, split: str) -> list[str]:
        """Return ids "<split>_<6-digit index>" of a split."""
        return [f"{split}_{i:06d}" for i in range(self._count(split))]

    def load(self, image_id: str) -> ImageRecord:
        """Render the image, exact label map and instances (visible pixels of each object) of an id."""
        match = _ID_RE.match(image_id)
        if not match or int(match.group(2)) >= self._count(match.group(1)):
            raise DatasetError(
                f"toy: unknown image id {image_id!r}; expected 'train_NNNNNN' (< {self.config.n_train}) "
                f"or 'val_NNNNNN' (< {self.config.n_val})"
            )
        split, index = match.group(1), int(match.group(2))
        c = self.config
        image, label, instances = render_scene_instances(c.seed, split, index, c.image_size, c.variety)
        return ImageRecord(image_id, image, label, present_classes(label), instances)

    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {class id: ids of images with a visible pixel of it}, rendering the split once."""
        if split not in self._index:
            index: dict[int, list[str]] = {cid: [] for cid in self.classes()}
            for image_id in self.image_ids(split):
                for cid in self.load(image_id).class_ids:
                    index[cid].append(image_id)
            self._index[split] = index
        return self._index[split]
