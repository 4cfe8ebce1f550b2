"""The baseline MaskDiff compares with: Mask R-CNN's class-agnostic FCN mask head, here run on the region crop.

Mask R-CNN's head is 4 conv3x3 + ReLU on 14x14 RoI features, a 2x2 stride-2 deconvolution + ReLU and a 1x1 conv
to one logit map per class at 28x28. The class-agnostic variant has one map. Here it reads the same (3, S, S)
region crop in [-1, 1] that the diffusion head is conditioned on (no detector features, no class, no supports),
and its 2S x 2S logits are resized (bilinear) back to S x S so masks line up with the crop like sample_masks'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Mask R-CNN's mask-head depth.
FCN_CONVS = 4
#: The sigmoid cut of a mask.
THRESHOLD = 0.5


class FcnHeadError(ValueError):
    """An FCN-head argument or tensor that cannot be used: names it and what was expected."""


class FcnMaskHead(nn.Module):
    """Class-agnostic FCN mask head: `convs` x (conv3x3 + ReLU), 2x deconv + ReLU, 1x1 conv to one logit map."""

    def __init__(self, in_channels: int = 3, width: int = 64, convs: int = FCN_CONVS) -> None:
        """Build the layers (in_channels inputs, `width` channels throughout, `convs` 3x3 convolutions)."""
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("width", width, 1), ("convs", convs, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FcnHeadError(f"FcnMaskHead.{name}: expected an int >= {low}, got {value!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(channels, width, 2, stride=2)
        self.logits = nn.Conv2d(width, 1, 1)
        # Mask R-CNN's init: He (fan-out) normal weights, zero biases
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """Return the (N, 1, S, S) mask logits of (N, C, S, S) region crops."""
        if regions.ndim != 4 or regions.shape[1] != self.convs_in_channels:
            raise FcnHeadError(
                f"regions: expected an (N, {self.convs_in_channels}, S, S) tensor, got {tuple(regions.shape)}"
            )
        size = regions.shape[-2:]
        x = F.relu(self.deconv(self.convs(regions)))
        return F.interpolate(self.logits(x), size=size, mode="bilinear", align_corners=False)

    @property
    def convs_in_channels(self) -> int:
        """Input channels of the first layer."""
        first = self.convs[0] if len(self.convs) else self.deconv
        return int(first.in_channels)


def fcn_loss(head: FcnMaskHead, regions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mask R-CNN's mask loss: mean per-pixel binary cross-entropy of the logits against (N, 1, S, S) {0, 1} targets
    (bool or float)."""
    logits = head(regions)
    if targets.shape != logits.shape:
        raise FcnHeadError(f"targets: expected shape {tuple(logits.shape)} like the logits, got {tuple(targets.shape)}")
    t = targets.to(logits.dtype)
    if ((t != 0) & (t != 1)).any():
        raise FcnHeadError("targets: expected values in {0, 1} (map mask_targets' {-1, +1} with > 0 first)")
    return F.binary_cross_entropy_with_logits(logits, t)


@torch.no_grad()
def fcn_masks(head: FcnMaskHead, regions: torch.Tensor) -> torch.Tensor:
    """Return the (N, 1, S, S) boolean masks of region crops: sigmoid(logit) > 0.5. The caller sets head.eval()."""
    return torch.sigmoid(head(regions).float()) > THRESHOLD
