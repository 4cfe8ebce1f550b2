"""The DiffewS network: SD's UNet with conv_in_ref and KV fusion, the frozen VAE, and one empty-prompt embedding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from maskforge.models.diffews.kv_fusion import KVBank, bank_checkpointing, install_kv_fusion

#: The one timestep DiffewS feeds (OI2M: with its beta = 1 schedule every alpha-bar is 0, so t only selects the
#: time embedding the UNet was fine-tuned with).
OI2M_TIMESTEP = 1
#: Channels into conv_in_ref: support image latent (4) then support mask latent (4).
IN_CHANNELS_REF = 8


class DiffewsModelError(ValueError):
    """A UNet, latent or support set DiffewS cannot use: names the file, argument or value and what was expected."""


def add_conv_in_ref(unet, in_channels_ref: int = IN_CHANNELS_REF) -> nn.Conv2d:
    """Add the support input convolution `conv_in_ref` (in_channels_ref -> first block channels) to a UNet.

    Initialised from conv_in the way Marigold widens an input layer: conv_in's kernel repeated over the extra
    channel groups and divided by their count, so a support pass starts as the pretrained UNet's response.
    Recorded in the UNet's config as `in_channels_ref` (the authors' key), so save_pretrained keeps it.
    """
    conv = unet.conv_in
    if conv.in_channels != 4 or in_channels_ref % 4:
        raise DiffewsModelError(
            f"conv_in_ref: needs a 4-channel conv_in and in_channels_ref a multiple of 4, got conv_in "
            f"{conv.in_channels} and in_channels_ref {in_channels_ref}"
        )
    ref = nn.Conv2d(in_channels_ref, conv.out_channels, conv.kernel_size, padding=conv.padding)
    repeats = in_channels_ref // conv.in_channels
    with torch.no_grad():
        ref.weight.copy_(conv.weight.repeat(1, repeats, 1, 1) / repeats)
        ref.bias.copy_(conv.bias)
    unet.conv_in_ref = ref.to(device=conv.weight.device, dtype=conv.weight.dtype)
    unet.register_to_config(in_channels_ref=in_channels_ref)
    return unet.conv_in_ref


@contextmanager
def _support_input(unet) -> Iterator[None]:
    """Let the UNet read its input through conv_in_ref for one forward pass (the query keeps conv_in)."""
    original = unet.conv_in
    unet.conv_in = unet.conv_in_ref
    try:
        yield
    finally:
        unet.conv_in = original


class DiffewsNet(nn.Module):
    """UNet (with conv_in_ref, KV-fused self-attention), frozen VAE, fixed empty-prompt embedding (1, L, C)."""

    def __init__(self, unet, vae, text_embedding: torch.Tensor) -> None:
        """Wrap the parts; installs the KV-fusion processors and freezes the VAE."""
        super().__init__()
        if not hasattr(unet, "conv_in_ref"):
            raise DiffewsModelError("DiffewsNet: the UNet has no conv_in_ref; build it with add_conv_in_ref")
        self.unet = unet
        self.vae = vae.requires_grad_(False).eval()
        self.register_buffer("text_embedding", text_embedding.detach().clone(), persistent=False)
        self.bank = KVBank()
        self.fused_layers = install_kv_fusion(unet, self.bank)
        self._checkpoint = bank_checkpointing(self.bank)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's blocks in backward instead of keeping their activations (training memory), through
        kv_fusion.bank_checkpointing, so recomputed blocks see the bank as their forward call did."""
        self.unet.enable_gradient_checkpointing(self._checkpoint)

    def disable_gradient_checkpointing(self) -> None:
        """Keep every activation again (the default)."""
        self.unet.disable_gradient_checkpointing()

    def _checkpoints_without_bank(self) -> bool:
        """Whether some UNet block checkpoints with another function than bank_checkpointing's (e.g. diffusers'
        default, from unet.enable_gradient_checkpointing())."""
        return any(
            getattr(m, "_gradient_checkpointing_func", None) is not self._checkpoint
            for m in self.unet.modules()
            if getattr(m, "gradient_checkpointing", False) is True
        )

    def train(self, mode: bool = True) -> "DiffewsNet":
        """Set the UNet's mode; the VAE always stays in eval mode (it is frozen)."""
        super().train(mode)
        self.vae.eval()
        return self

    def _unet(self, x: torch.Tensor) -> torch.Tensor:
        """One UNet forward at t = 1 with the empty-prompt embedding."""
        if torch.is_grad_enabled() and self.unet.is_gradient_checkpointing and self._checkpoints_without_bank():
            # diffusers' own checkpointing recomputes a layer after the bank's mode was reset: wrong gradients
            raise DiffewsModelError(
                "gradient checkpointing: the UNet checkpoints without the KV bank (unet.enable_gradient_checkpointing);"
                " use DiffewsNet.enable_gradient_checkpointing, which replays the bank in recomputation"
            )
        t = torch.full((x.shape[0],), OI2M_TIMESTEP, device=x.device, dtype=torch.long)
        text = self.text_embedding.to(dtype=x.dtype).expand(x.shape[0], -1, -1)
        return self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

    def support_pass(self, image_latents: torch.Tensor, mask_latents: torch.Tensor, groups: int) -> torch.Tensor:
        """Fill the bank: conv_in_ref over [image latent, mask latent] of G·n supports (episode-major); returns the
        UNet output (unused by the loss; a training step may add 0 × it so every parameter is in the graph)."""
        if image_latents.shape != mask_latents.shape:
            raise DiffewsModelError(
                f"supports: image latents {tuple(image_latents.shape)} and mask latents "
                f"{tuple(mask_latents.shape)} differ"
            )
        self.bank.groups = groups
        self.bank.mode = "write"
        try:
            with _support_input(self.unet):
                return self._unet(torch.cat([image_latents, mask_latents], dim=1))
        finally:
            self.bank.mode = "off"

    def query_pass(self, query_latents: torch.Tensor) -> torch.Tensor:
        """OI2M: one UNet step on the clean query image latent, attending over the bank; returns the predicted mask
        latent. The UNet (v-prediction at alpha-bar 0) outputs -z_mask, so the prediction is its negation."""
        self.bank.mode = "read"
        try:
            return -self._unet(query_latents)
        finally:
            self.bank.mode = "off"

    def forward(
        self, query_latents: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor
    ) -> torch.Tensor:
        """Predict the query mask latents of G episodes from G·n supports (episode-major); the bank is cleared after.

        Query and support latents must have the same spatial size (the bank's tokens must match the query's
        layers); there must be at least one support per query.
        """
        groups = query_latents.shape[0]
        if groups == 0:
            raise DiffewsModelError("queries: expected at least one query latent, got 0")
        if support_images.shape[0] == 0:
            raise DiffewsModelError("supports: expected at least one support per episode, got 0")
        if support_images.shape[0] % groups:
            raise DiffewsModelError(
                f"supports: {support_images.shape[0]} support latents cannot be split evenly over {groups} queries"
            )
        if support_images.shape[-2:] != query_latents.shape[-2:]:
            raise DiffewsModelError(
                f"supports: support latents are {tuple(support_images.shape[-2:])}, the query latent is "
                f"{tuple(query_latents.shape[-2:])}; resize both to the model's img_size"
            )
        self.bank.clear()
        try:
            self.support_pass(support_images, support_masks, groups)
            return self.query_pass(query_latents)
        finally:
            self.bank.clear()
