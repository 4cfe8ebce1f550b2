"""HPNLearner: squeeze each hypercorrelation level with center-pivot 4D blocks, mix coarse to fine, decode 2 logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskforge.models.hsnet.conv4d import CenterPivotConv4d

#: Out channels of the three 4D convs of every squeezing block.
SQUEEZE_CHANNELS: tuple[int, int, int] = (16, 64, 128)
#: (kernels, support strides) of the squeezing blocks of levels 4, 3 and 2.
SQUEEZE_LEVEL4 = ((3, 3, 3), (2, 2, 2))
SQUEEZE_LEVEL3 = ((5, 3, 3), (4, 2, 2))
SQUEEZE_LEVEL2 = ((5, 5, 3), (4, 4, 2))


def conv4d_block(
    in_channels: int, out_channels: tuple[int, ...], kernels: tuple[int, ...], strides: tuple[int, ...]
) -> nn.Sequential:
    """Return [CenterPivotConv4d -> GroupNorm(4) -> ReLU] x len(out_channels) as one Sequential (indices 0..3n-1)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for out, k, s in zip(out_channels, kernels, strides):
        layers += [CenterPivotConv4d(channels, out, k, s), nn.GroupNorm(4, out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers)


def upsample_query_dims(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize the query dims (Hq, Wq) of a (B, C, Hq, Wq, Hs, Ws) tensor, align_corners=True."""
    b, c, hq, wq, hs, ws = x.shape
    flat = x.permute(0, 1, 4, 5, 2, 3).reshape(b, c * hs * ws, hq, wq)
    flat = F.interpolate(flat, size, mode="bilinear", align_corners=True)
    return flat.view(b, c, hs, ws, *size).permute(0, 1, 4, 5, 2, 3)


class HPNLearner(nn.Module):
    """The learnable part of HSNet (about 2.6M parameters); module names follow the authors' checkpoints."""

    def __init__(self, inch: tuple[int, int, int]) -> None:
        """`inch` = feature maps per level, deepest first (ResNet-101: (3, 23, 4); ResNet-50: (3, 6, 4); VGG16: (1, 3,
        3))."""
        super().__init__()
        c16, c64, c128 = SQUEEZE_CHANNELS
        self.encoder_layer4 = conv4d_block(inch[0], SQUEEZE_CHANNELS, *SQUEEZE_LEVEL4)
        self.encoder_layer3 = conv4d_block(inch[1], SQUEEZE_CHANNELS, *SQUEEZE_LEVEL3)
        self.encoder_layer2 = conv4d_block(inch[2], SQUEEZE_CHANNELS, *SQUEEZE_LEVEL2)
        self.encoder_layer4to3 = conv4d_block(c128, (c128,) * 3, (3, 3, 3), (1, 1, 1))
        self.encoder_layer3to2 = conv4d_block(c128, (c128,) * 3, (3, 3, 3), (1, 1, 1))
        self.decoder1 = nn.Sequential(
            nn.Conv2d(c128, c128, 3, padding=1, bias=True),
            nn.ReLU(),
            nn.Conv2d(c128, c64, 3, padding=1, bias=True),
            nn.ReLU(),
        )
        self.decoder2 = nn.Sequential(
            nn.Conv2d(c64, c64, 3, padding=1, bias=True),
            nn.ReLU(),
            nn.Conv2d(c64, 2, 3, padding=1, bias=True),
        )

    @staticmethod
    def _mix(coarse: torch.Tensor, fine: torch.Tensor, level: str) -> torch.Tensor:
        """Upsample `coarse` to `fine`'s query size and add; the squeezed support dims must already agree."""
        if coarse.shape[-2:] != fine.shape[-2:]:
            raise ValueError(
                f"HPNLearner: squeezed support dims differ between levels ({tuple(coarse.shape[-2:])} vs "
                f"{tuple(fine.shape[-2:])} at {level}); use a larger or square input size"
            )
        return upsample_query_dims(coarse, tuple(fine.shape[2:4])) + fine

    def forward(self, hypercorr: list[torch.Tensor]) -> torch.Tensor:
        """Map [level 4, level 3, level 2] correlations to 2-channel logits at twice level 2's query resolution."""
        sq4 = self.encoder_layer4(hypercorr[0])
        sq3 = self.encoder_layer3(hypercorr[1])
        sq2 = self.encoder_layer2(hypercorr[2])
        mix43 = self.encoder_layer4to3(self._mix(sq4, sq3, "level 4 -> 3"))
        mix32 = self.encoder_layer3to2(self._mix(mix43, sq2, "level 3 -> 2"))
        encoded = mix32.mean(dim=(-2, -1))  # average the remaining support dims: (B, 128, Hq2, Wq2)
        hidden = self.decoder1(encoded)
        hidden = F.interpolate(
            hidden, (hidden.shape[-2] * 2, hidden.shape[-1] * 2), mode="bilinear", align_corners=True
        )
        return self.decoder2(hidden)
