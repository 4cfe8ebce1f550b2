"""Conditioning API: condition(supports) computes masked support features once; predict(state, images) is batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskforge.models.hsnet.backbone import IMAGENET_MEAN, IMAGENET_STD, pyramid_counts
from maskforge.models.hsnet.model import HSNet


class SegmenterInputError(ValueError):
    """Bad images or masks given to the segmenter (message names the argument, index, shape and what was expected)."""


@dataclass(frozen=True)
class SupportState:
    """Masked support features of K shots: per level, per layer, a (K, C, h, w) tensor on the model's device."""

    levels: tuple[tuple[torch.Tensor, ...], ...]
    n_shots: int

    def extend(self, other: "SupportState") -> "SupportState":
        """Return the state of both support sets together (no feature is recomputed)."""
        levels = tuple(tuple(torch.cat([a, b], 0) for a, b in zip(la, lb)) for la, lb in zip(self.levels, other.levels))
        return SupportState(levels, self.n_shots + other.n_shots)

    def shot(self, k: int) -> list[list[torch.Tensor]]:
        """Return shot k's masked feature pyramid with a batch dim of 1."""
        return [[t[k : k + 1] for t in level] for level in self.levels]


def vote_masks(shot_masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """HSNet's k-shot rule on (K, N, H, W) binary masks: sum the votes, divide by each image's max vote (>= 1),
    keep >= threshold (HSNet: 0.5).

    With K = 1 the one mask is returned as is.
    """
    if shot_masks.ndim != 4:
        raise SegmenterInputError(
            f"vote_masks: expected (K, N, H, W) binary masks, got shape {tuple(shot_masks.shape)}"
        )
    votes = shot_masks.long().sum(0)
    if shot_masks.shape[0] == 1:
        return votes.bool()
    peak = votes.flatten(1).max(1).values.clamp(min=1).view(-1, 1, 1)
    return votes.float() / peak >= threshold


def _check_image(image: np.ndarray, what: str) -> None:
    """Raise SegmenterInputError unless image is a uint8 (H, W, 3) array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise SegmenterInputError(f"{what}: expected a uint8 RGB array of shape (H, W, 3), got {desc}")


def prepare_images(images: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """Return (N, 3, size, size): uint8 RGB -> [0, 1], bilinear resize (align_corners=True), ImageNet mean/std."""
    out = []
    for image in images:
        t = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255.0
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t, (size, size), mode="bilinear", align_corners=True)
        out.append(t)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (torch.cat(out, 0) - mean) / std


def prepare_labels(labels: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """Return (N, size, size) float maps resized with nearest neighbour (masks, or targets with -1 ignore)."""
    t = torch.stack([torch.from_numpy(np.ascontiguousarray(m).astype(np.float32)) for m in labels]).to(device)
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t[:, None], (size, size), mode="nearest")[:, 0]
    return t


class HSNetSegmenter:
    """Runs an HSNet on numpy images: resize to the model's square input, ImageNet-normalise, predict, resize back."""

    def __init__(self, net: HSNet, device: str | torch.device = "cpu", batch_size: int = 16) -> None:
        """Wrap a (trained) HSNet for inference on `device`, predicting at most `batch_size` images per pass."""
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.img_size = net.spec.img_size
        self.batch_size = batch_size

    @torch.no_grad()
    def condition(
        self, supports: Sequence[tuple[np.ndarray, np.ndarray]], base: SupportState | None = None
    ) -> SupportState:
        """Compute the masked support features of (image, mask) pairs once; `base` adds them to an earlier state.

        Masks are boolean (or 0/1) arrays of the image's size with at least one foreground pixel.
        """
        if len(supports) == 0:
            raise SegmenterInputError("condition: supports is empty; expected at least one (image, mask) pair")
        images, masks = [], []
        for i, pair in enumerate(supports):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise SegmenterInputError(f"condition: supports[{i}] must be an (image, mask) pair")
            image, mask = pair
            _check_image(image, f"condition: supports[{i}] image")
            mask = np.asarray(mask)
            if mask.shape != image.shape[:2]:
                raise SegmenterInputError(
                    f"condition: supports[{i}] mask has shape {mask.shape}, expected the image's size {image.shape[:2]}"
                )
            mask = mask.astype(bool)
            if not mask.any():
                raise SegmenterInputError(
                    f"condition: supports[{i}] mask has no foreground pixel; a support must show the class"
                )
            images.append(image)
            masks.append(mask)
        levels: list[list[torch.Tensor]] | None = None
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            feats = self.net.features(prepare_images(images[chunk], self.img_size, self.device))
            masked = self.net.mask_support(feats, prepare_labels(masks[chunk], self.img_size, self.device))
            if levels is None:
                levels = masked
            else:
                levels = [[torch.cat([a, b]) for a, b in zip(la, lb)] for la, lb in zip(levels, masked)]
        state = SupportState(tuple(tuple(level) for level in levels), len(images))
        return state if base is None else base.extend(state)

    def _check_state(self, state: SupportState) -> None:
        """Raise SegmenterInputError unless state was computed by this segmenter's backbone on its device type."""
        if not isinstance(state, SupportState):
            raise SegmenterInputError(
                f"predict: state must be a SupportState from condition(), got {type(state).__name__}"
            )
        first = state.levels[0][0]
        if first.device.type != self.device.type:
            raise SegmenterInputError(
                f"predict: the support state lives on {first.device}, this segmenter runs on {self.device}; "
                "condition the supports with this segmenter"
            )
        expected = list(pyramid_counts(self.net.spec.backbone, self.net.spec.tiny))
        got = [len(level) for level in state.levels]
        if got != expected:
            raise SegmenterInputError(
                f"predict: the support state has {got} feature maps per level, this model expects {expected}; "
                "condition the supports with this segmenter"
            )

    @torch.no_grad()
    def shot_masks(self, state: SupportState, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Return (K, N, H, W) boolean 1-shot predictions of N same-size images, one per support shot."""
        if len(images) == 0:
            raise SegmenterInputError("predict: images is empty; expected at least one image")
        for i, image in enumerate(images):
            _check_image(image, f"predict: images[{i}]")
            if image.shape != images[0].shape:
                raise SegmenterInputError(
                    f"predict: images[{i}] has shape {image.shape} but images[0] has {images[0].shape}; "
                    "one call takes images of one size"
                )
        self._check_state(state)
        size = tuple(images[0].shape[:2])
        out = torch.zeros((state.n_shots, len(images), *size), dtype=torch.bool, device=self.device)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            query = self.net.features(prepare_images(chunk, self.img_size, self.device))
            # every (image, shot) pair is one 1-shot pass; pairs run batch_size at a time
            pairs = [(i, k) for k in range(state.n_shots) for i in range(len(chunk))]
            for p0 in range(0, len(pairs), self.batch_size):
                batch = pairs[p0 : p0 + self.batch_size]
                qi = torch.tensor([i for i, _ in batch], device=self.device)
                sk = torch.tensor([k for _, k in batch], device=self.device)
                q = [[t[qi] for t in level] for level in query]
                s = [[t[sk] for t in level] for level in state.levels]
                pred = self.net.logits_from_features(q, s, size).argmax(1).bool()
                out[sk, qi + start] = pred
        return out

    def predict(self, state: SupportState, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return (N, H, W) boolean foreground masks for same-size uint8 images, with HSNet's k-shot vote."""
        return vote_masks(self.shot_masks(state, images)).cpu().numpy()
