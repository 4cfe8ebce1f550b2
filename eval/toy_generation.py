"""Score toy generative models with the oracle: does "a photo of a {class}" show that class, does a mask hold it."""

from __future__ import annotations

import numpy as np
import torch

from maskforge.eval.metrics import iou
from maskforge.eval.toy_oracle import dominant_material, oracle_mask, recognise


def class_images(pipe, class_name: str, n: int, steps: int, guidance: float, seed: int, **control) -> np.ndarray:
    """Generate n images (uint8, N x H x W x 3) of "a photo of a {class_name}" with a seeded generator.

    Extra keyword arguments (image=..., a ControlNet condition) pass through to the pipeline.
    """
    gen = torch.Generator("cpu").manual_seed(seed)
    out = pipe(
        [f"a photo of a {class_name}"] * n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gen,
        output_type="np",
        **control,
    ).images
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def recognition(images: np.ndarray, class_name: str) -> dict[str, float]:
    """Return the shares of images in which the oracle sees the class, its material, and its shape."""
    material, shape = class_name.split(" ")
    seen = [recognise(img) for img in images]
    mats = [dominant_material(img) for img in images]
    return {
        "class": float(np.mean([s == class_name for s in seen])),
        "material": float(np.mean([m == material for m in mats])),
        "shape": float(np.mean([s is not None and s.split(" ")[1] == shape for s in seen])),
    }


def mask_fit(images: np.ndarray, masks: np.ndarray, class_name: str) -> float:
    """Mean IoU between each condition mask and the oracle segment of the class material in its image."""
    material = class_name.split(" ")[0]
    return float(np.mean([iou(oracle_mask(img, material), m) for img, m in zip(images, masks)]))
