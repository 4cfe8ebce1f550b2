"""Human-readable preview of one sample: upscaled image, class overlay with outlines, legend panel and key title."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskforge.storage.codec import ShardSample
from maskforge.storage.labels import IGNORE, present_classes

#: Kelly's colours of maximum contrast (grey, white and black left out: grey marks ignore, the others vanish).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0xF3, 0xC3, 0x00),
    (0x87, 0x56, 0x92),
    (0xF3, 0x84, 0x00),
    (0xA1, 0xCA, 0xF1),
    (0xBE, 0x00, 0x32),
    (0xC2, 0xB2, 0x80),
    (0x00, 0x88, 0x56),
    (0xE6, 0x8F, 0xAC),
    (0x00, 0x67, 0xA5),
    (0xF9, 0x93, 0x79),
    (0x60, 0x4E, 0x97),
    (0xF6, 0xA6, 0x00),
    (0xB3, 0x44, 0x6C),
    (0xDC, 0xD3, 0x00),
    (0x88, 0x2D, 0x17),
    (0x8D, 0xB6, 0x00),
    (0x65, 0x45, 0x22),
    (0xE2, 0x58, 0x22),
    (0x2B, 0x3D, 0x26),
)
IGNORE_COLOURS = ((128, 128, 128), (200, 200, 200))  # hatch stripes
OVERLAY_ALPHA = 0.45
LEGEND_WIDTH = 260
TITLE_HEIGHT = 30
ROW_HEIGHT = 24
SWATCH = 16
PAD = 10
FONT_SIZE = 14
_HATCH_PERIOD = 8


def class_colours(classes: tuple[int, ...]) -> dict[int, tuple[int, int, int]]:
    """Give each class its palette colour (by id, so a class looks the same in every preview), resolving clashes."""
    used: set[int] = set()
    colours = {}
    for class_id in classes:
        slot = class_id % len(PALETTE)
        # Two classes of one image sharing a colour would be unreadable: take the next free slot instead.
        for step in range(len(PALETTE)):
            if (slot + step) % len(PALETTE) not in used:
                slot = (slot + step) % len(PALETTE)
                break
        used.add(slot)
        colours[class_id] = PALETTE[slot]
    return colours


def _hatch(shape: tuple[int, int]) -> np.ndarray:
    """Return an HxWx3 diagonal-stripe pattern in the two ignore greys."""
    rows, cols = np.indices(shape)
    stripe = ((rows + cols) // (_HATCH_PERIOD // 2)) % 2 == 0
    return np.where(stripe[..., None], np.array(IGNORE_COLOURS[0]), np.array(IGNORE_COLOURS[1])).astype(np.uint8)


def _grow(mask: np.ndarray) -> np.ndarray:
    """Return mask dilated by one pixel in the 4-neighbourhood."""
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:-1, :] |= mask[1:, :]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _outline(label: np.ndarray, width: int) -> np.ndarray:
    """Return a boolean map of non-background pixels within `width` pixels of a change of label value."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge &= label != 0
    for _ in range(width - 1):
        edge = _grow(edge) & (label != 0)
    return edge


def overlay(image: np.ndarray, label: np.ndarray, colours: dict[int, tuple[int, int, int]], scale: int) -> np.ndarray:
    """Return the image upscaled by an integer factor (nearest) with each class in `colours` tinted and outlined,
    and ignore pixels hatched."""
    big_label = label.repeat(scale, axis=0).repeat(scale, axis=1)
    canvas = image.repeat(scale, axis=0).repeat(scale, axis=1).astype(np.float32)
    for class_id, colour in colours.items():
        mask = big_label == class_id
        canvas[mask] = (1 - OVERLAY_ALPHA) * canvas[mask] + OVERLAY_ALPHA * np.array(colour, np.float32)
    ignore = big_label == IGNORE
    canvas[ignore] = 0.3 * canvas[ignore] + 0.7 * _hatch(big_label.shape)[ignore]
    # 2-px outlines once upscaled: visible at a glance, while 1-px objects at scale 1 are not painted over.
    edge = _outline(big_label, width=2 if scale >= 2 else 1)
    for class_id, colour in colours.items():
        canvas[edge & (big_label == class_id)] = colour
    return canvas.round().astype(np.uint8)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """Return text, shortened with an ellipsis until it fits in width pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_preview(sample: ShardSample, class_names: dict[int, str], min_side: int = 384) -> Image.Image:
    """Return an RGB preview: image upscaled (nearest, integer factor) to a short side >= min_side with overlay,
    outlines, a legend on the right (swatch, "id name", pixel share; "ignore" if present) and the key as title.

    Size: width = W*s + LEGEND_WIDTH, height = TITLE_HEIGHT + max(H*s, legend rows), s = ceil(min_side / min(H, W)).
    """
    image, label = sample.image, sample.label
    if not isinstance(min_side, int) or min_side < 1:
        raise ValueError(f"min_side must be an int >= 1, got {min_side!r}")
    if image.ndim != 3 or image.shape[2] != 3 or label.shape != image.shape[:2]:
        raise ValueError(f"sample {sample.key!r}: need HxWx3 image and HxW label, got {image.shape} and {label.shape}")
    classes = present_classes(label)
    unnamed = [c for c in classes if c not in class_names]
    if unnamed:
        raise KeyError(f"sample {sample.key!r}: class ids {unnamed} have no entry in class_names")
    colours = class_colours(classes)
    scale = max(1, math.ceil(min_side / min(label.shape)))
    picture = Image.fromarray(overlay(image, label, colours, scale))
    ignore = label == IGNORE

    # Legend rows: (swatch colour or hatch, "id name", share of pixels).
    rows: list[tuple[np.ndarray | tuple[int, int, int], str, str]] = []
    total = label.size
    for class_id in classes:
        share = 100.0 * np.count_nonzero(label == class_id) / total
        rows.append((colours[class_id], f"{class_id} {class_names[class_id]}", f"{share:.1f}%"))
    if ignore.any():
        share = 100.0 * np.count_nonzero(label == IGNORE) / total
        rows.append((_hatch((SWATCH, SWATCH)), "ignore", f"{share:.1f}%"))
    if not rows:
        rows.append(((0, 0, 0), "background only", ""))

    font = ImageFont.load_default(size=FONT_SIZE)
    body_height = max(picture.height, 2 * PAD + ROW_HEIGHT * (len(rows) + 1))
    out = Image.new("RGB", (picture.width + LEGEND_WIDTH, TITLE_HEIGHT + body_height), (255, 255, 255))
    out.paste(picture, (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, out.width - 1, TITLE_HEIGHT - 1), fill=(32, 32, 32))
    title = _fit(draw, sample.key, font, out.width - 2 * PAD)
    draw.text((PAD, (TITLE_HEIGHT - FONT_SIZE) // 2), title, fill=(255, 255, 255), font=font)
    left = picture.width + PAD
    draw.text((left, TITLE_HEIGHT + PAD), "classes", fill=(0, 0, 0), font=font)
    for index, (swatch, text, share) in enumerate(rows, start=1):
        top = TITLE_HEIGHT + PAD + index * ROW_HEIGHT
        if isinstance(swatch, np.ndarray):
            out.paste(Image.fromarray(swatch), (left, top))
        else:
            draw.rectangle((left, top, left + SWATCH - 1, top + SWATCH - 1), fill=swatch)
        draw.rectangle((left - 1, top - 1, left + SWATCH, top + SWATCH), outline=(0, 0, 0))
        text_left = left + SWATCH + 8
        share_width = int(draw.textlength(share, font=font))
        draw.text((out.width - PAD - share_width, top), share, fill=(90, 90, 90), font=font)
        name_width = out.width - text_left - PAD - share_width - 8
        draw.text((text_left, top), _fit(draw, text, font, name_width), fill=(0, 0, 0), font=font)
    return out
