"""Toy-world scores that run the diffusion stage itself: how well its coarse cross-attention masks fit the object."""

from __future__ import annotations

import numpy as np

from maskforge.eval.toy_generation import mask_fit
from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.xattn_mask import coarse_mask, soft_map
from maskforge.tasks.diffusion import GenItem, generate_batch


def xattn_fit(pipe, class_name: str, n: int, steps: int, guidance: float, seed: int) -> float:
    """Mean IoU between the diffusion stage's coarse cross-attention masks (its defaults: factors 2 and 4, cut 0.4)
    and the oracle segment, over n text-prompted images of a class; seeds seed .. seed + n - 1."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    cfg = DiffusionConfig(model="(in memory)", steps=steps, image_size=size, xattn={"factors": [2, 4]})
    items = [GenItem("text", i, seed + i, f"a photo of a {class_name}", "", guidance) for i in range(n)]
    images, maps, _ = generate_batch(pipe, items, class_name, cfg, (size, size))
    masks = np.stack(
        [
            coarse_mask(soft_map({f: m[i] for f, m in maps.items()}, (size, size)), cfg.xattn.threshold)[0]
            for i in range(n)
        ]
    )
    return mask_fit(images, masks, class_name)
