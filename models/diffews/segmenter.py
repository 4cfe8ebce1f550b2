"""DiffewS inference on raw images: resize, encode supports and query, KV-fused OI2M step, decode and threshold."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from maskforge.models.diffews import codec
from maskforge.models.diffews.network import DiffewsModelError, DiffewsNet

#: Bank contents reused across episodes (e.g. a class's synthetic supports): KVBank.snapshot() output.
BankState = tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]


def size_multiple(net: DiffewsNet) -> int:
    """Return the side multiple an input needs: the VAE's downsampling x the UNet's."""
    vae_factor = 2 ** (len(net.vae.config.block_out_channels) - 1)
    return vae_factor * 2 ** (len(net.unet.config.block_out_channels) - 1)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on the device (None: full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def merge_banks(*states: BankState) -> BankState:
    """Return one bank holding every given bank's supports, in order (e.g. a class's synthetic supports and an
    episode's real ones): per layer, the stored K/V lists concatenated."""
    keys: dict[str, list[torch.Tensor]] = {}
    values: dict[str, list[torch.Tensor]] = {}
    for state_keys, state_values in states:
        for name, tensors in state_keys.items():
            keys.setdefault(name, []).extend(tensors)
        for name, tensors in state_values.items():
            values.setdefault(name, []).extend(tensors)
    return keys, values


class DiffewsSegmenter:
    """Segments query images from (image, mask) supports with a DiffewsNet, one episode at a time."""

    def __init__(
        self,
        net: DiffewsNet,
        img_size: int,
        device: torch.device,
        dtype: torch.dtype | None = None,
        relative: float = 0.25,
        floor: float = 0.0,
        rule: str = "authors",
    ) -> None:
        """Run `net` on `device` at img_size (a multiple of size_multiple), autocast to `dtype` if given; masks are
        cut by codec.threshold_masks' `rule` with `relative` (and `floor`, "mean-floor" only)."""
        multiple = size_multiple(net)
        if img_size % multiple:
            raise DiffewsModelError(
                f"model.img_size: {img_size} is not a multiple of {multiple} (VAE x UNet downsampling); "
                "query and support latents would not match the UNet's layers"
            )
        self.net = net.to(device).eval()
        self.img_size, self.device, self.dtype = img_size, device, dtype
        self.relative, self.floor, self.rule = relative, floor, rule

    @torch.inference_mode()
    def query_latents(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return the posterior-mean latents of query images (B, 4, h, w)."""
        with autocast(self.device, self.dtype):
            return codec.encode(self.net.vae, codec.images_to_tensor(images, self.img_size, self.device))

    @torch.inference_mode()
    def support_latents(
        self, images: list[np.ndarray], masks: list[np.ndarray], names: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (image latents, mask latents) of supports; a support without foreground (after resizing) is an
        error naming it, and so is an empty support list."""
        if not images:
            raise DiffewsModelError("supports: expected at least one support (image, mask), got 0")
        if not (len(images) == len(masks) == len(names)):
            raise DiffewsModelError(f"supports: {len(images)} images, {len(masks)} masks, {len(names)} names differ")
        rgb = codec.masks_to_rgb(masks, self.img_size, self.device)
        for name, mask, resized in zip(names, masks, rgb):
            if not np.asarray(mask).any() or not bool((resized[0] > 0).any()):
                raise DiffewsModelError(
                    f"support {name}: its mask has no foreground at {self.img_size} px; a support must show the class"
                )
        with autocast(self.device, self.dtype):
            image_latents = codec.encode(self.net.vae, codec.images_to_tensor(images, self.img_size, self.device))
            return image_latents, codec.encode(self.net.vae, rgb)

    @torch.inference_mode()
    def bank_state(self, image_latents: torch.Tensor, mask_latents: torch.Tensor) -> BankState:
        """Run one support pass and return the bank it fills (reused by every episode that adds these supports)."""
        bank = self.net.bank
        bank.clear()
        try:
            with autocast(self.device, self.dtype):
                self.net.support_pass(image_latents, mask_latents, groups=1)
            return bank.snapshot()
        finally:
            bank.clear()

    @torch.inference_mode()
    def predict(
        self,
        query_latent: torch.Tensor,
        size: tuple[int, int],
        supports: tuple[torch.Tensor, torch.Tensor] | None = None,
        extra: BankState | None = None,
    ) -> np.ndarray:
        """Return the boolean mask (at `size`) of one query latent (1, 4, h, w) given support latents and/or a
        stored bank (`extra`, e.g. synthetic supports); the bank is cleared afterwards."""
        if supports is None and extra is None:
            raise DiffewsModelError("supports: expected at least one support or a stored support bank, got none")
        if supports is not None and supports[0].shape[-2:] != query_latent.shape[-2:]:
            raise DiffewsModelError(
                f"supports: support latents are {tuple(supports[0].shape[-2:])}, the query latent is "
                f"{tuple(query_latent.shape[-2:])}; both must come from the same img_size"
            )
        bank = self.net.bank
        bank.clear()
        try:
            with autocast(self.device, self.dtype):
                if extra is not None:
                    bank.restore(extra)
                if supports is not None:
                    self.net.support_pass(supports[0], supports[1], groups=1)
                mask_latent = self.net.query_pass(query_latent)
                rgb = codec.decode_rgb(self.net.vae, mask_latent)
        finally:
            bank.clear()
        return codec.threshold_masks(rgb, [size], self.relative, self.floor, self.rule)[0]
