"""MaskDiff's mask head: a class-conditional DDPM over box-crop masks (UNet2DModel), its conditioning, loss, sampler.

The denoiser sees [noisy mask (1) | object-region crop (3) | K background-removed support crops (3K)] at
`size` x `size`, everything in [-1, 1]; the class enters through UNet2DModel's class embedding (added to the time
embedding every residual block receives), whose last row (index C) is the null class of classifier-free guidance.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torchvision.ops import roi_align

from maskforge.storage.fs import file_problem

#: Training noise schedule of the paper (Alg. 1): DDPM, T = 1000, linear betas; make_scheduler adds the prediction
#: type and the sampler's x0 clipping.
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
#: What the UNet predicts: epsilon (the paper's Alg. 1) or v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022),
#: whose loss keeps weight on the mask at low signal-to-noise, where only the region crop can tell its shape.
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: Samplers sample_masks offers and their default step counts (DDPM: the paper's 1000 ancestral steps).
SCHEDULER_KINDS = {"ddpm": 1000, "ddim": 50}
MAX_SHOTS = 30
MIN_SIZE, MAX_SIZE = 16, 256
MAX_GUIDANCE = 20.0
MAX_STEPS = 1000
#: safetensors metadata keys of a mask-head checkpoint.
SPEC_KEY, METADATA_KEY = "maskdiff_spec", "maskdiff_metadata"


class MaskHeadError(ValueError):
    """A mask-head argument, spec or tensor that cannot be used: names the argument and what was expected."""


class MaskHeadCheckpointError(MaskHeadError):
    """A mask-head checkpoint that cannot be read or does not match its spec: names the file."""


@dataclass(frozen=True)
class MaskHeadSpec:
    """Shape of a mask head: C real classes (null = index C), K shots, mask size and the UNet's levels.

    `attention_level` indexes `block_out_channels` (down order); self-attention sits at that level (down and up)
    and in the mid block only. `attention_head_dim` is not given by the paper (64: guided-diffusion's head width).
    """

    num_classes: int
    shots: int
    size: int = 128
    block_out_channels: tuple[int, ...] = (128, 128, 256, 384, 512)
    attention_level: int = 3
    layers_per_block: int = 2
    norm_num_groups: int = 32
    attention_head_dim: int = 64
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        """Check every field; a bad one is a MaskHeadError naming it."""
        if self.prediction_type not in PREDICTION_TYPES:
            raise MaskHeadError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise MaskHeadError(f"num_classes: expected an int >= 1, got {self.num_classes!r}")
        check_shots(self.shots)
        levels = len(self.block_out_channels)
        if levels < 2:
            raise MaskHeadError(f"block_out_channels: expected at least 2 levels, got {list(self.block_out_channels)}")
        check_size(self.size, levels)
        if not 0 <= self.attention_level < levels:
            raise MaskHeadError(f"attention_level: expected 0..{levels - 1}, got {self.attention_level}")
        if self.layers_per_block < 1:
            raise MaskHeadError(f"layers_per_block: expected >= 1, got {self.layers_per_block}")
        for c in self.block_out_channels:
            if c < 1 or c % self.norm_num_groups:
                raise MaskHeadError(
                    f"block_out_channels: {c} is not a positive multiple of norm_num_groups {self.norm_num_groups}"
                )
        attn_channels = (self.block_out_channels[self.attention_level], self.block_out_channels[-1])
        if self.attention_head_dim < 1 or any(c % self.attention_head_dim for c in attn_channels):
            raise MaskHeadError(
                f"attention_head_dim: {self.attention_head_dim} must divide the attention channels {attn_channels}"
            )

    @property
    def null_class(self) -> int:
        """Index of the null (unconditional) class: C."""
        return self.num_classes

    @property
    def in_channels(self) -> int:
        """UNet input channels: noisy mask + region crop + K support crops = 1 + 3 + 3K."""
        return 1 + 3 + 3 * self.shots


def check_shots(shots: int) -> int:
    """Return `shots` or raise MaskHeadError unless it is an int in 1..30."""
    if not (isinstance(shots, int) and 1 <= shots <= MAX_SHOTS):
        raise MaskHeadError(f"shots: expected an int in 1..{MAX_SHOTS}, got {shots!r}")
    return shots


def check_size(size: int, levels: int = 1) -> int:
    """Return `size` or raise MaskHeadError unless it is in 16..256 and a multiple of 2^(levels-1)."""
    step = 2 ** (levels - 1)
    if not (isinstance(size, int) and MIN_SIZE <= size <= MAX_SIZE and size % step == 0):
        raise MaskHeadError(f"size: expected an int in {MIN_SIZE}..{MAX_SIZE} and a multiple of {step}, got {size!r}")
    return size


def paper_spec(num_classes: int, shots: int) -> MaskHeadSpec:
    """The paper's head: 128x128 masks, channels 128/128/256/384/512, attention at 384 (16x16) and mid, GN 32."""
    return MaskHeadSpec(num_classes, shots)


def tiny_spec(num_classes: int, shots: int) -> MaskHeadSpec:
    """A test-sized head: 32x32 masks, channels 16/16/32, attention at the second-to-last level and mid, GN 8."""
    return MaskHeadSpec(
        num_classes,
        shots,
        size=32,
        block_out_channels=(16, 16, 32),
        attention_level=1,
        norm_num_groups=8,
        attention_head_dim=8,
    )


def build_mask_head(spec: MaskHeadSpec):
    """Return a freshly initialised UNet2DModel for `spec` (in 1 + 3 + 3K, out 1, C + 1 class embeddings)."""
    from diffusers import UNet2DModel

    levels = len(spec.block_out_channels)
    down = tuple("AttnDownBlock2D" if i == spec.attention_level else "DownBlock2D" for i in range(levels))
    # up blocks run from the deepest level back up: up block j serves level levels-1-j
    up = tuple("AttnUpBlock2D" if levels - 1 - j == spec.attention_level else "UpBlock2D" for j in range(levels))
    return UNet2DModel(
        sample_size=spec.size,
        in_channels=spec.in_channels,
        out_channels=1,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2D",
        add_attention=True,
        block_out_channels=spec.block_out_channels,
        layers_per_block=spec.layers_per_block,
        norm_num_groups=spec.norm_num_groups,
        attention_head_dim=spec.attention_head_dim,
        num_class_embeds=spec.num_classes + 1,
    )


def make_scheduler(kind: str = "ddpm", prediction_type: str = "epsilon", clip_sample: bool | None = None):
    """Return a fresh DDPMScheduler ("ddpm", also the training schedule) or DDIMScheduler ("ddim", without x0
    clipping) built from SCHEDULER_CONFIG, for a head that predicts `prediction_type` (PREDICTION_TYPES);
    `clip_sample` overrides the sampler's x0 clipping (for bench/maskdiff_clip.py)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if prediction_type not in PREDICTION_TYPES:
        raise MaskHeadError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
    config = {**SCHEDULER_CONFIG, "prediction_type": prediction_type}
    if kind not in SCHEDULER_KINDS:
        raise MaskHeadError(f"scheduler_kind: expected one of {sorted(SCHEDULER_KINDS)}, got {kind!r}")
    # no x0 clipping in the deterministic sampler: under guidance (w = 5) it collapsed the toy head's novel segm AP
    # from 28.99 to 8.00 (bench/maskdiff_clip.py); the ancestral sampler keeps it, as diffusers' DDPM does
    config["clip_sample"] = kind == "ddpm" if clip_sample is None else bool(clip_sample)
    return (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(**config)


# --- conditioning ------------------------------------------------------------------------------------------------


def _boxes(boxes, count: int | None, what: str = "boxes") -> torch.Tensor:
    """Return boxes as a float32 (N, 4) xyxy tensor, checked (finite, x2 >= x1, y2 >= y1, N = count if given)."""
    b = boxes.detach() if torch.is_tensor(boxes) else torch.from_numpy(np.asarray(boxes, dtype=np.float32))
    b = b.to("cpu", torch.float32)
    if b.numel() == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise MaskHeadError(f"{what}: expected an (N, 4) xyxy array, got shape {tuple(b.shape)}")
    if count is not None and b.shape[0] != count:
        raise MaskHeadError(f"{what}: expected {count} boxes (one per mask/image), got {b.shape[0]}")
    if not torch.isfinite(b).all():
        raise MaskHeadError(f"{what}: boxes must be finite")
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise MaskHeadError(f"{what}: every box must have x2 >= x1 and y2 >= y1 (xyxy)")
    return b


def _image(image, what: str) -> torch.Tensor:
    """Return a uint8 HxWx3 image as a (1, 3, H, W) float tensor in [-1, 1]."""
    arr = image if torch.is_tensor(image) else torch.from_numpy(np.ascontiguousarray(image))
    if arr.dtype != torch.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise MaskHeadError(f"{what}: expected a uint8 HxWx3 image, got {arr.dtype} {tuple(arr.shape)}")
    return arr.permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def _crop(planes: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """roi_align (aligned=True, adaptive sampling) of (1, C, H, W) planes over (N, 4) boxes: (N, C, size, size).

    Samples outside the image read 0, i.e. mid-grey for an image in [-1, 1].
    """
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    return roi_align(planes, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def region_crops(image, boxes, size: int) -> torch.Tensor:
    """Return the object-region crops of one uint8 HxWx3 image under (N, 4) xyxy boxes: (N, 3, size, size) in
    [-1, 1] (torchvision roi_align, aligned=True; any part of a box outside the image is 0)."""
    check_size(size)
    b = _boxes(boxes, None)
    planes = _image(image, "image")
    if len(b) == 0:
        return torch.zeros(0, 3, size, size)
    return _crop(planes, b, size)


def _mask_planes(mask, what: str) -> torch.Tensor:
    """Return a boolean HxW mask as a (1, 1, H, W) float tensor."""
    m = mask if torch.is_tensor(mask) else torch.from_numpy(np.ascontiguousarray(mask))
    if m.dtype != torch.bool or m.ndim != 2:
        raise MaskHeadError(f"{what}: expected a boolean HxW mask, got {m.dtype} {tuple(m.shape)}")
    return m[None, None].float()


def mask_targets(masks: Sequence, boxes, size: int) -> torch.Tensor:
    """Return the box crops of boolean HxW masks (one box each): (N, 1, size, size) in {-1, +1} (roi_align of the
    mask, aligned=True, then > 0.5)."""
    check_size(size)
    b = _boxes(boxes, len(masks))
    out = torch.empty(len(masks), 1, size, size)
    for i, mask in enumerate(masks):
        soft = _crop(_mask_planes(mask, f"masks[{i}]"), b[i : i + 1], size)
        out[i] = torch.where(soft > 0.5, 1.0, -1.0)[0]
    return out


def support_crops(images: Sequence, masks: Sequence, boxes, size: int) -> torch.Tensor:
    """Return the K background-removed support crops: (K, 3, size, size) in [-1, 1].

    Each support's image is cropped to its box like region_crops; pixels outside its mask (the mask cropped the
    same way and cut at 0.5, as in mask_targets) are set to 0, i.e. mid-grey in [-1, 1] -- the value roi_align
    also gives outside the image, so "no object here" always reads 0.
    """
    check_size(size)
    check_shots(len(images))
    if len(masks) != len(images):
        raise MaskHeadError(f"masks: expected {len(images)} support masks (one per image), got {len(masks)}")
    b = _boxes(boxes, len(images))
    out = torch.empty(len(images), 3, size, size)
    for k, (image, mask) in enumerate(zip(images, masks)):
        planes = _image(image, f"images[{k}]")
        m = _mask_planes(mask, f"masks[{k}]")
        if m.shape[-2:] != planes.shape[-2:]:
            raise MaskHeadError(f"masks[{k}]: mask is {tuple(m.shape[-2:])}, its image is {tuple(planes.shape[-2:])}")
        keep = _crop(m, b[k : k + 1], size) > 0.5
        out[k] = (_crop(planes, b[k : k + 1], size) * keep)[0]
    return out


def condition(regions: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
    """Return the conditioning of N detections: each region crop followed by all K support crops (shot order),
    (N, 3 + 3K, S, S)."""
    if regions.ndim != 4 or regions.shape[1] != 3 or supports.ndim != 4 or supports.shape[1] != 3:
        raise MaskHeadError(
            f"condition: expected regions (N, 3, S, S) and supports (K, 3, S, S), got {tuple(regions.shape)} "
            f"and {tuple(supports.shape)}"
        )
    if regions.shape[-2:] != supports.shape[-2:]:
        raise MaskHeadError(
            f"condition: region crops are {tuple(regions.shape[-2:])}, support crops {tuple(supports.shape[-2:])}"
        )
    flat = supports.reshape(1, -1, *supports.shape[-2:]).to(regions)
    return torch.cat([regions, flat.expand(regions.shape[0], -1, -1, -1)], dim=1)


# --- diffusion ---------------------------------------------------------------------------------------------------


def _class_labels(class_ids, count: int, null_class: int, device) -> torch.Tensor:
    """Return class ids as a long (N,) tensor on `device`, each in 0..null_class (null itself allowed)."""
    ids = torch.as_tensor(class_ids, dtype=torch.long).reshape(-1).to(device)
    if ids.shape[0] != count:
        raise MaskHeadError(f"class_ids: expected {count} class ids (one per mask), got {ids.shape[0]}")
    if count and (ids.min() < 0 or ids.max() > null_class):
        raise MaskHeadError(f"class_ids: expected ids in 0..{null_class} (null class {null_class}), got {ids.tolist()}")
    return ids


def _check_inputs(unet, cond: torch.Tensor, null_class: int) -> None:
    """Raise MaskHeadError unless cond is (N, C, S, S) and, for a real UNet, its channels and null class fit."""
    if cond.ndim != 4 or cond.shape[-1] != cond.shape[-2]:
        raise MaskHeadError(f"cond: expected an (N, 3 + 3K, S, S) tensor, got {tuple(cond.shape)}")
    config = getattr(unet, "config", None)
    if config is None:
        return
    if getattr(config, "in_channels", None) is not None and config.in_channels != cond.shape[1] + 1:
        raise MaskHeadError(
            f"cond: {cond.shape[1]} channels, the UNet takes {config.in_channels} (1 mask + {config.in_channels - 1})"
        )
    if getattr(config, "num_class_embeds", None) is not None and config.num_class_embeds != null_class + 1:
        raise MaskHeadError(
            f"null_class: {null_class}, the UNet has {config.num_class_embeds} class embeddings (null = last)"
        )


def _check_guidance(w: float) -> float:
    """Return `w` or raise MaskHeadError unless 0 <= w <= 20."""
    if not 0.0 <= float(w) <= MAX_GUIDANCE:
        raise MaskHeadError(f"w: expected a guidance weight in [0, {MAX_GUIDANCE:g}], got {w!r}")
    return float(w)


def _draw(kind: str, shape: tuple, generator: torch.Generator | None, device, high: int = 0) -> torch.Tensor:
    """Draw on the generator's device (so a CPU generator reproduces on any device), then move to `device`."""
    where = generator.device if generator is not None else device
    if kind == "randint":
        out = torch.randint(0, high, shape, generator=generator, device=where)
    elif kind == "randn":
        out = torch.randn(shape, generator=generator, device=where)
    else:
        out = torch.rand(shape, generator=generator, device=where)
    return out.to(device)


def diffusion_loss(
    unet,
    scheduler,
    x0: torch.Tensor,
    cond: torch.Tensor,
    class_ids,
    null_class: int,
    p_uncond: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Paper Alg. 1: MSE between the UNet's epsilon and the drawn noise, for masks x0 (N, 1, S, S) in {-1, +1}.

    Draws, in this order from `generator`: t ~ U{0..T-1} (N,), eps ~ N(0, 1) like x0, u ~ U[0, 1) (N,); a class is
    replaced by the null class where u < p_uncond. x_t = scheduler.add_noise(x0, eps, t). A scheduler built for
    "v_prediction" makes the target v = scheduler.get_velocity(x0, eps, t) instead of eps.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise MaskHeadError(f"p_uncond: expected a probability in [0, 1], got {p_uncond!r}")
    _check_inputs(unet, cond, null_class)
    n = x0.shape[0]
    if x0.ndim != 4 or x0.shape[1] != 1 or x0.shape[0] != cond.shape[0] or x0.shape[-2:] != cond.shape[-2:]:
        raise MaskHeadError(
            f"x0: expected ({cond.shape[0]}, 1, S, S) like cond {tuple(cond.shape)}, got {tuple(x0.shape)}"
        )
    labels = _class_labels(class_ids, n, null_class, x0.device)
    steps = int(scheduler.config.num_train_timesteps)
    t = _draw("randint", (n,), generator, x0.device, high=steps)
    eps = _draw("randn", tuple(x0.shape), generator, x0.device).to(x0.dtype)
    drop = _draw("rand", (n,), generator, x0.device) < p_uncond
    labels = torch.where(drop, torch.full_like(labels, null_class), labels)
    x_t = scheduler.add_noise(x0, eps, t)
    pred = unet(torch.cat([x_t, cond.to(x_t)], dim=1), t, class_labels=labels).sample
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise MaskHeadError(f"scheduler: prediction_type {kind!r}; expected one of {PREDICTION_TYPES}")
    target = eps if kind == "epsilon" else scheduler.get_velocity(x0, eps, t)
    return F.mse_loss(pred.float(), target.float())


def guided_eps(unet, x_t: torch.Tensor, t, cond: torch.Tensor, class_ids, null_class: int, w: float) -> torch.Tensor:
    """Classifier-free guidance (paper Alg. 2): w * eps(c) + (1 - w) * eps(null), both halves in ONE forward of
    batch 2N (w = 1: the conditional model alone, w = 0: the unconditional one).

    For a v-predicting head the same combination of its outputs is the guided v; it equals guiding eps, since
    eps = sqrt(a) v + sqrt(1 - a) x_t is affine in v at fixed x_t and the weights sum to 1.
    """
    w = _check_guidance(w)
    n = x_t.shape[0]
    labels = _class_labels(class_ids, n, null_class, x_t.device)
    x = torch.cat([x_t, cond.to(x_t)], dim=1)
    steps = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(n) if n else torch.zeros(0, device=x_t.device)
    out = unet(
        torch.cat([x, x]),
        torch.cat([steps, steps]),
        class_labels=torch.cat([labels, torch.full_like(labels, null_class)]),
    ).sample
    cond_eps, uncond_eps = out.float().chunk(2)
    return w * cond_eps + (1.0 - w) * uncond_eps


@torch.no_grad()
def sample_masks(
    unet,
    cond: torch.Tensor,
    class_ids,
    null_class: int,
    w: float = 5.0,
    scheduler_kind: str = "ddpm",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Paper Alg. 2: sample N binary masks (N, 1, S, S) for conditioning cond (N, 3 + 3K, S, S).

    x_T ~ N(0, 1) (drawn from `generator`), then `steps` denoising steps (DDPM ancestral, default 1000; or DDIM with
    eta 0, default 50) with guided_eps -- one UNet forward of batch 2N per step for all N detections -- and the final
    x_0 is cut at 0. The state is kept in float32; the UNet runs in cond's dtype. `prediction_type` is the head's
    (MaskHeadSpec.prediction_type). The caller sets unet.eval().
    """
    if scheduler_kind not in SCHEDULER_KINDS:
        raise MaskHeadError(f"scheduler_kind: expected one of {sorted(SCHEDULER_KINDS)}, got {scheduler_kind!r}")
    steps = SCHEDULER_KINDS[scheduler_kind] if steps is None else steps
    if not (isinstance(steps, int) and 1 <= steps <= MAX_STEPS):
        raise MaskHeadError(f"steps: expected an int in 1..{MAX_STEPS}, got {steps!r}")
    w = _check_guidance(w)
    _check_inputs(unet, cond, null_class)
    n, size = cond.shape[0], cond.shape[-1]
    labels = _class_labels(class_ids, n, null_class, cond.device)
    if n == 0:
        return torch.zeros(0, 1, size, size, dtype=torch.bool, device=cond.device)
    scheduler = make_scheduler(scheduler_kind, prediction_type)
    scheduler.set_timesteps(steps, device=cond.device)
    x = _draw("randn", (n, 1, size, size), generator, cond.device)
    extra = {"eta": 0.0} if scheduler_kind == "ddim" else {"generator": generator}
    for t in scheduler.timesteps:
        eps = guided_eps(unet, x.to(cond.dtype), t, cond, labels, null_class, w)
        x = scheduler.step(eps, t, x, **extra).prev_sample.float()
    return x > 0


def paste_masks(masks: torch.Tensor, boxes, image_hw: tuple[int, int]) -> torch.Tensor:
    """Paste box-crop masks (N, 1, S, S) bool into full-image masks (N, H, W) bool.

    The crop spans the box in continuous pixel coordinates (as roi_align with aligned=True reads it): each image
    pixel whose centre lies in the box samples the crop bilinearly (on 0/1 floats, edge values repeated), kept
    where > 0.5 -- the same as resizing the crop to an integer box with F.interpolate. Pixels outside the image are
    simply not drawn (the box is clipped), so the pasted part keeps its geometry; a box of zero width or height
    pastes nothing.
    """
    height, width = (int(v) for v in image_hw)
    if height < 1 or width < 1:
        raise MaskHeadError(f"image_hw: expected a positive (height, width), got {tuple(image_hw)}")
    if masks.ndim != 4 or masks.shape[1] != 1 or masks.dtype != torch.bool:
        raise MaskHeadError(f"masks: expected an (N, 1, S, S) boolean tensor, got {masks.dtype} {tuple(masks.shape)}")
    b = _boxes(boxes, masks.shape[0])
    out = torch.zeros(masks.shape[0], height, width, dtype=torch.bool, device=masks.device)
    for i, (x1, y1, x2, y2) in enumerate(b.tolist()):
        # pixels i with centre i + 0.5 in [x1, x2): i in ceil(x1 - 0.5) .. ceil(x2 - 0.5) - 1, clipped to the image
        c0, c1 = max(int(np.ceil(x1 - 0.5)), 0), min(int(np.ceil(x2 - 0.5)), width)
        r0, r1 = max(int(np.ceil(y1 - 0.5)), 0), min(int(np.ceil(y2 - 0.5)), height)
        if c1 <= c0 or r1 <= r0:
            continue
        xs = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x1) / (x2 - x1) * 2 - 1
        ys = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None].to(masks.device)
        soft = F.grid_sample(
            masks[i : i + 1].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        out[i, r0:r1, c0:c1] = soft[0, 0] > 0.5
    return out


# --- checkpoints -------------------------------------------------------------------------------------------------


def save_mask_head(path: str | Path, unet, spec: MaskHeadSpec, metadata: dict) -> Path:
    """Write the UNet's weights to one safetensors file (float32) with the spec and `metadata` (JSON-ready) as
    JSON in its metadata; written to a temporary file and renamed into place."""
    path = Path(path)
    try:
        meta = {"format": "pt", SPEC_KEY: json.dumps(asdict(spec)), METADATA_KEY: json.dumps(metadata)}
    except (TypeError, ValueError) as err:
        raise MaskHeadError(f"metadata: not JSON-serialisable ({err})") from None
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in unet.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a checkpoint is shared like any other output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_mask_head(path: str | Path):
    """Load a mask-head checkpoint strictly: returns (unet, spec, metadata); any unreadable file, missing spec or
    missing / unexpected / mis-shaped tensor is a MaskHeadCheckpointError naming the file."""
    path = Path(path).expanduser()
    if problem := file_problem(path):
        raise MaskHeadCheckpointError(f"mask head: {path} {problem} (expected a safetensors file from save_mask_head)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as err:
        raise MaskHeadCheckpointError(f"mask head: cannot read {path} ({err})") from None
    if SPEC_KEY not in meta:
        raise MaskHeadCheckpointError(f"mask head: {path} has no '{SPEC_KEY}' metadata (not written by save_mask_head)")
    try:
        spec = MaskHeadSpec(**json.loads(meta[SPEC_KEY]))
        metadata = json.loads(meta.get(METADATA_KEY, "{}"))
    except (TypeError, ValueError) as err:
        raise MaskHeadCheckpointError(f"mask head: {path} has an unusable spec or metadata ({err})") from None
    unet = build_mask_head(spec)
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} != {s}" for k, s in expected.items() if k in state and tuple(state[k].shape) != s
    )
    if missing or unexpected or mis_shaped:
        parts = [
            f"{len(v)} {label} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
            if v
        ]
        raise MaskHeadCheckpointError(f"mask head: {path} does not match its spec: {'; '.join(parts)}")
    unet.load_state_dict(state, strict=True)
    return unet, spec, metadata
