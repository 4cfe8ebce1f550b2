"""DiffewS's image and mask codec: resize to the model's square, masks as white-on-black RGB, frozen-VAE latents."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def images_to_tensor(images: list[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """Return uint8 HxWx3 images as a (B, 3, size, size) float tensor in [-1, 1], resized bilinearly (no crop, aspect
    ratio not kept, as DiffewS's Resize((512, 512)))."""
    out = []
    for image in images:
        t = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        out.append(F.interpolate(t, (size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out).clamp(-1.0, 1.0)


def masks_to_rgb(masks: list[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """Return boolean HxW masks as (B, 3, size, size) RGB in {-1, +1}: white (+1) foreground, black (-1) background;
    resized with nearest neighbour so values stay binary."""
    out = []
    for mask in masks:
        t = torch.from_numpy(np.asarray(mask, dtype=bool).astype(np.float32)).to(device)[None, None]
        out.append(F.interpolate(t, (size, size), mode="nearest"))
    return torch.cat(out).mul(2.0).sub(1.0).expand(-1, 3, -1, -1).contiguous()


def encode(vae, pixels: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return VAE latents of pixels in [-1, 1]: the posterior mean (inference) or a sample (training), shifted and
    scaled by the VAE's config (scaling_factor; shift_factor where the VAE has one)."""
    dist = vae.encode(pixels.to(vae.dtype)).latent_dist
    z = dist.sample(generator) if sample else dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def decode_rgb(vae, latents: torch.Tensor) -> torch.Tensor:
    """Return the VAE decode of scaled latents as (B, 3, H, W) in [0, 1] (clipped to [-1, 1] first, then x * 0.5 + 0.5
    as the authors' pipeline writes it, so the uint8 truncation below sees the same floats)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    pixels = vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype)).sample
    return pixels.float().clamp(-1.0, 1.0) * 0.5 + 0.5


#: The mask cuts `threshold_masks` knows: the DiffewS authors' and maskforge's earlier float one with a floor.
THRESHOLD_RULES = ("authors", "mean-floor")


def threshold_masks(
    rgb: torch.Tensor,
    sizes: list[tuple[int, int]],
    relative: float = 0.25,
    floor: float = 0.0,
    rule: str = "authors",
) -> list[np.ndarray]:
    """Return boolean masks (one per (H, W) in `sizes`) from decoded mask RGB in [0, 1].

    rule "authors" (aim-uofa/DiffewS d12c396, diffews/marigold_pipeline_rgb_latent_noise.py:790-795,534 and
    evaluation_util/main_oss.py:128-134): x255, resized nearest to the size, truncated to uint8, read back as k/255;
    foreground where the channel mean > `relative` x the maximum over all three channels and pixels; no floor
    (`floor` must be 0).
    rule "mean-floor": the channel mean in float, resized bilinearly, foreground where it exceeds
    max(relative x the maximum of the mean, floor); a floor keeps an all-black decode empty (the toy VAE decodes
    black to grey, so its config uses this rule).
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule: {rule!r} is not one of {list(THRESHOLD_RULES)}")
    if rule == "authors" and floor:
        raise ValueError(f"threshold floor: {floor} given, but the authors' rule has no floor (expected 0)")
    masks = []
    if rule == "authors":
        scaled = rgb.float() * 255.0
        for i, size in enumerate(sizes):
            m = F.interpolate(scaled[i : i + 1], size, mode="nearest")[0]
            m = m.clamp(0.0, 255.0).to(torch.uint8).float() / 255.0  # truncation, as numpy's astype(np.uint8)
            masks.append((m.mean(0) > relative * m.max()).cpu().numpy())
        return masks
    mean = rgb.mean(1, keepdim=True)
    for i, size in enumerate(sizes):
        m = F.interpolate(mean[i : i + 1], size, mode="bilinear", align_corners=False)[0, 0]
        cut = max(relative * float(m.max()), floor)
        masks.append((m > cut).cpu().numpy())
    return masks
