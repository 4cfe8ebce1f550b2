"""HSNet: frozen backbone features, masked support, hypercorrelation and HPNLearner; checkpoint-compatible names."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from maskforge.models.hsnet.backbone import TinySpec, build_backbone, extract_features, pyramid_counts
from maskforge.models.hsnet.correlation import hypercorrelation, mask_features
from maskforge.models.hsnet.learner import HPNLearner


@dataclass(frozen=True)
class HSNetSpec:
    """What defines an HSNet: the backbone name, the tiny backbone's shape and seed, and the square input size."""

    backbone: str = "resnet101"
    img_size: int = 400
    tiny: TinySpec = field(default_factory=TinySpec)
    tiny_seed: int = 0

    def to_dict(self) -> dict:
        """Return JSON-compatible data (stored in checkpoint metadata)."""
        return {
            "backbone": self.backbone,
            "img_size": self.img_size,
            "tiny": {
                "layers": list(self.tiny.layers),
                "width_per_group": self.tiny.width_per_group,
                "maxpool": self.tiny.maxpool,
            },
            "tiny_seed": self.tiny_seed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "HSNetSpec":
        """Rebuild a spec from to_dict()'s output."""
        tiny = data.get("tiny") or {}
        return cls(
            backbone=data["backbone"],
            img_size=int(data["img_size"]),
            tiny=TinySpec(
                tuple(tiny.get("layers", TinySpec().layers)),
                int(tiny.get("width_per_group", TinySpec().width_per_group)),
                bool(tiny.get("maxpool", TinySpec().maxpool)),
            ),
            tiny_seed=int(data.get("tiny_seed", 0)),
        )


class HSNet(nn.Module):
    """Hypercorrelation Squeeze Network: `backbone` (a torchvision model, frozen) and `hpn_learner` (trained)."""

    def __init__(self, spec: HSNetSpec, backbone: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.hpn_learner = HPNLearner(pyramid_counts(spec.backbone, spec.tiny))
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "HSNet":
        """Set the learner's mode; the backbone always stays in eval mode (BN statistics are frozen)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[list[torch.Tensor]]:
        """Return the frozen feature pyramid of normalised images (B, 3, S, S): [level 4, level 3, level 2] maps."""
        return extract_features(self.backbone, images)

    @staticmethod
    def mask_support(support_levels: list[list[torch.Tensor]], masks: torch.Tensor) -> list[list[torch.Tensor]]:
        """Multiply every support feature map by the support mask (B, S, S) resized to its size."""
        return [mask_features(level, masks) for level in support_levels]

    def logits_from_features(
        self,
        query_levels: list[list[torch.Tensor]],
        masked_support_levels: list[list[torch.Tensor]],
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Return (B, 2, H, W) logits for query/support feature pyramids, upsampled (align_corners=True) to `size`."""
        logits = self.hpn_learner(hypercorrelation(query_levels, masked_support_levels))
        return F.interpolate(logits, size, mode="bilinear", align_corners=True)

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """1-shot forward pass on normalised images (B, 3, S, S) and support masks (B, S, S): (B, 2, S, S) logits."""
        q = self.features(query)
        s = self.mask_support(self.features(support), support_mask)
        return self.logits_from_features(q, s, tuple(query.shape[-2:]))


class HSNetCheckpointModule(nn.Module):
    """Wraps HSNet as `module`: state-dict keys read `module.backbone.*` / `module.hpn_learner.*` as in HSNet files."""

    def __init__(self, net: HSNet) -> None:
        super().__init__()
        self.module = net


def build_hsnet(spec: HSNetSpec, backbone_weights: str | None) -> HSNet:
    """Build an HSNet; the backbone is loaded from `backbone_weights` (a local file) or stays random (tiny,
    checkpoints)."""
    return HSNet(spec, build_backbone(spec.backbone, backbone_weights, spec.tiny, spec.tiny_seed))


def learnable_parameters(net: HSNet) -> int:
    """Return the number of trainable parameters (the HPNLearner's; the backbone is frozen)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
