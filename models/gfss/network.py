"""GAPS-style GFSS network: a dilated ResNet with DeepLabV3's ASPP and a cosine pixel classifier, authors' key names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet101
from torchvision.models.resnet import ResNet

from maskforge.models.hsnet.backbone import BackboneError, TinyBottleneck, TinySpec, load_backbone_weights

#: Backbone names a GfssSpec accepts; "tiny" is a small random ResNet for tests and the toy demo.
GFSS_BACKBONES: tuple[str, ...] = ("resnet101", "tiny")

#: Channels of layer4's output, which the ASPP reads.
_LAYER4_CHANNELS: dict[str, int] = {"resnet101": 2048, "tiny": 512}


class GfssModelError(ValueError):
    """A GFSS network cannot be built or used as asked (the message names the field, file or tensor)."""


@dataclass(frozen=True)
class GfssSpec:
    """What defines a GFSS network: backbone, classes (background included), output stride, ASPP and tiny shape."""

    backbone: str
    num_classes: int
    output_stride: int = 16
    aspp_channels: int = 256
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    tiny: TinySpec = field(default_factory=TinySpec)
    tiny_seed: int = 0

    def __post_init__(self) -> None:
        """Reject values the network cannot be built with (the message names the field)."""
        if self.backbone not in GFSS_BACKBONES:
            raise GfssModelError(
                f"GfssSpec.backbone: unknown backbone {self.backbone!r}; expected one of {', '.join(GFSS_BACKBONES)}"
            )
        if self.output_stride not in (8, 16):
            raise GfssModelError(f"GfssSpec.output_stride: {self.output_stride!r} is not supported; expected 8 or 16")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise GfssModelError(
                f"GfssSpec.num_classes: {self.num_classes!r}; expected an integer >= 2 (background included)"
            )
        if not isinstance(self.aspp_channels, int) or self.aspp_channels < 1:
            raise GfssModelError(f"GfssSpec.aspp_channels: {self.aspp_channels!r}; expected a positive integer")
        rates = tuple(self.aspp_rates)
        if len(rates) != 3 or not all(isinstance(r, int) and r >= 1 for r in rates):
            raise GfssModelError(f"GfssSpec.aspp_rates: {self.aspp_rates!r}; expected three positive integers")
        object.__setattr__(self, "aspp_rates", rates)

    def to_dict(self) -> dict:
        """Return JSON-compatible data (stored in checkpoint metadata)."""
        return {
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
            "aspp_channels": self.aspp_channels,
            "aspp_rates": list(self.aspp_rates),
            "tiny": {
                "layers": list(self.tiny.layers),
                "width_per_group": self.tiny.width_per_group,
                "maxpool": self.tiny.maxpool,
            },
            "tiny_seed": self.tiny_seed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> GfssSpec:
        """Rebuild a spec from to_dict()'s output (missing optional fields take their defaults)."""
        tiny = data.get("tiny") or {}
        return cls(
            backbone=data["backbone"],
            num_classes=int(data["num_classes"]),
            output_stride=int(data.get("output_stride", 16)),
            aspp_channels=int(data.get("aspp_channels", 256)),
            aspp_rates=tuple(int(r) for r in data.get("aspp_rates", (6, 12, 18))),
            tiny=TinySpec(
                tuple(int(n) for n in tiny.get("layers", TinySpec().layers)),
                int(tiny.get("width_per_group", TinySpec().width_per_group)),
                bool(tiny.get("maxpool", TinySpec().maxpool)),
            ),
            tiny_seed=int(data.get("tiny_seed", 0)),
        )


def feature_stride(spec: GfssSpec) -> int:
    """Return the real input-to-feature stride: output_stride, halved for a tiny backbone without its max-pool."""
    if spec.backbone == "tiny" and not spec.tiny.maxpool:
        return spec.output_stride // 2
    return spec.output_stride


class ASPP(nn.Module):
    """DeepLabV3 atrous spatial pyramid pooling with GAPS's names; `bn2` is kept for the key layout but never used."""

    def __init__(self, in_channels: int, depth: int = 256, rates: tuple[int, int, int] = (6, 12, 18)) -> None:
        super().__init__()
        self.aspp1 = nn.Conv2d(in_channels, depth, 1, bias=False)
        self.aspp2 = nn.Conv2d(in_channels, depth, 3, padding=rates[0], dilation=rates[0], bias=False)
        self.aspp3 = nn.Conv2d(in_channels, depth, 3, padding=rates[1], dilation=rates[1], bias=False)
        self.aspp4 = nn.Conv2d(in_channels, depth, 3, padding=rates[2], dilation=rates[2], bias=False)
        self.aspp5 = nn.Conv2d(in_channels, depth, 1, bias=False)
        self.aspp1_bn = nn.BatchNorm2d(depth)
        self.aspp2_bn = nn.BatchNorm2d(depth)
        self.aspp3_bn = nn.BatchNorm2d(depth)
        self.aspp4_bn = nn.BatchNorm2d(depth)
        self.aspp5_bn = nn.BatchNorm2d(depth)
        self.conv2 = nn.Conv2d(depth * 5, depth, 1, bias=False)
        # The authors' checkpoints carry bn2 although their forward returns conv2's output directly.
        self.bn2 = nn.BatchNorm2d(depth)
        self.relu = nn.ReLU(inplace=True)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return conv2(concat of the five branches): (B, depth, h, w) for an input (B, in_channels, h, w)."""
        branches = [
            self.relu(bn(conv(x)))
            for conv, bn in (
                (self.aspp1, self.aspp1_bn),
                (self.aspp2, self.aspp2_bn),
                (self.aspp3, self.aspp3_bn),
                (self.aspp4, self.aspp4_bn),
            )
        ]
        pooled = self.relu(self.aspp5_bn(self.aspp5(F.adaptive_avg_pool2d(x, 1))))
        branches.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.conv2(torch.cat(branches, dim=1))


class GfssBackbone(nn.Module):
    """ResNet trunk (conv1 … layer4, no fc) plus ASPP, named so state_dict() keys are the authors' backbone keys."""

    def __init__(self, trunk: ResNet, aspp: ASPP) -> None:
        super().__init__()
        self.conv1 = trunk.conv1
        self.bn1 = trunk.bn1
        self.relu = trunk.relu
        self.maxpool = trunk.maxpool
        self.layer1 = trunk.layer1
        self.layer2 = trunk.layer2
        self.layer3 = trunk.layer3
        self.layer4 = trunk.layer4
        self.aspp = aspp

    def forward_with_layer4(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ASPP features, layer4 output) of normalised images; GAPS's context-aware sampling pools layer4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        layer4 = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.aspp(layer4), layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ASPP features (B, aspp_channels, H / stride, W / stride) of normalised images."""
        return self.forward_with_layer4(x)[0]


class CosineHead(nn.Module):
    """GAPS's seg_cos classifier: logits = scale × cosine(feature, class weight), a bias-free 1×1 conv."""

    scale: float = 10.0

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pixel_classifier = nn.Module()
        self.pixel_classifier.class_mat = nn.Conv2d(in_channels, num_classes, 1, bias=False)

    @property
    def num_classes(self) -> int:
        """Number of classes (rows of the class matrix), background included."""
        return self.pixel_classifier.class_mat.out_channels

    @property
    def in_channels(self) -> int:
        """Feature channels the head reads."""
        return self.pixel_classifier.class_mat.in_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return logits (B, num_classes, h, w) at the features' resolution (no upsampling here)."""
        weight = self.pixel_classifier.class_mat.weight
        unit_weight = F.normalize(weight.flatten(1), dim=1).view_as(weight)
        return self.scale * F.conv2d(F.normalize(features, dim=1), unit_weight)

    def expanded(self, n_total: int, new_weights: torch.Tensor | None) -> CosineHead:
        """Return a new head with n_total classes: this head's rows first, then `new_weights` rows L2-normalised.

        `new_weights` (n_total - num_classes, C) usually comes from weight imprinting (masked_average_pool);
        None gives the new rows the default random initialisation instead.
        """
        old = self.pixel_classifier.class_mat.weight.detach()
        n_new = n_total - self.num_classes
        if n_new < 0:
            raise GfssModelError(f"CosineHead.expanded: n_total {n_total} is below the current {self.num_classes}")
        head = CosineHead(self.in_channels, n_total).to(device=old.device, dtype=old.dtype)
        target = head.pixel_classifier.class_mat.weight
        with torch.no_grad():
            target[: self.num_classes].copy_(old)
            if new_weights is not None:
                if tuple(new_weights.shape) != (n_new, self.in_channels):
                    raise GfssModelError(
                        f"CosineHead.expanded: new_weights has shape {tuple(new_weights.shape)}, "
                        f"expected ({n_new}, {self.in_channels})"
                    )
                rows = F.normalize(new_weights.detach().to(device=old.device, dtype=old.dtype), dim=1)
                target[self.num_classes :].copy_(rows.view(n_new, self.in_channels, 1, 1))
        return head


class GfssNet(nn.Module):
    """GFSS segmenter: `backbone` (GfssBackbone) then `head` (CosineHead); logits upsampled to the input size."""

    def __init__(self, spec: GfssSpec, backbone: GfssBackbone, head: CosineHead) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the backbone's ASPP features of normalised images."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits (B, num_classes, H, W), bilinearly upsampled (align_corners=False) to the input size."""
        logits = self.head(self.backbone(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def replace_head(self, head: CosineHead) -> None:
        """Install `head` (e.g. an expanded one) and record its class count in `spec`."""
        if head.in_channels != self.spec.aspp_channels:
            raise GfssModelError(
                f"GfssNet.replace_head: head reads {head.in_channels} channels, expected {self.spec.aspp_channels}"
            )
        self.head = head
        self.spec = dataclasses.replace(self.spec, num_classes=head.num_classes)


def _trunk(spec: GfssSpec) -> ResNet:
    """Return the torchvision ResNet whose parts become the backbone (dilated layer3/4 for the output stride)."""
    dilation = [False, spec.output_stride == 8, True]
    if spec.backbone == "resnet101":
        return resnet101(weights=None, replace_stride_with_dilation=dilation)
    trunk = ResNet(
        TinyBottleneck,
        list(spec.tiny.layers),
        width_per_group=spec.tiny.width_per_group,
        replace_stride_with_dilation=dilation,
    )
    if not spec.tiny.maxpool:
        trunk.maxpool = nn.Identity()
    return trunk


def _assemble(spec: GfssSpec) -> GfssNet:
    """Build a randomly initialised GfssNet from `spec` with the current RNG."""
    backbone = GfssBackbone(_trunk(spec), ASPP(_LAYER4_CHANNELS[spec.backbone], spec.aspp_channels, spec.aspp_rates))
    return GfssNet(spec, backbone, CosineHead(spec.aspp_channels, spec.num_classes))


def build_gfss(spec: GfssSpec, backbone_weights: str | None = None) -> GfssNet:
    """Build a GfssNet with random weights; `backbone_weights` (resnet101 only) loads a local torchvision file.

    The file is a torchvision ResNet-101 ImageNet state dict (.pth or .safetensors, with its fc.* keys, which are
    dropped); conv1, bn1 and layer1-4 are loaded strictly, the ASPP and head stay random. Nothing is downloaded.
    The tiny network is seeded with spec.tiny_seed (the global RNG is restored); resnet101 uses the global RNG.
    """
    if spec.backbone == "tiny":
        if backbone_weights is not None:
            raise GfssModelError(
                f"build_gfss: backbone 'tiny' takes no pretrained weights, got {backbone_weights!r}; use resnet101"
            )
        state = torch.random.get_rng_state()
        torch.manual_seed(spec.tiny_seed)
        try:
            return _assemble(spec)
        finally:
            torch.random.set_rng_state(state)
    net = _assemble(spec)
    if backbone_weights is not None:
        if not Path(backbone_weights).is_file():
            raise GfssModelError(
                f"build_gfss: backbone weights file {backbone_weights!r} not found; expected a local torchvision "
                "resnet101 state dict (.pth or .safetensors); nothing is downloaded"
            )
        # Dilation changes no key or shape, so a plain torchvision model checks the file; its parts are then copied.
        reference = resnet101(weights=None)
        try:
            load_backbone_weights(reference, "resnet101", backbone_weights)
        except BackboneError as err:
            raise GfssModelError(f"build_gfss: {err}") from None
        trunk_state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
        missing, unexpected = net.backbone.load_state_dict(trunk_state, strict=False)
        if unexpected or any(not k.startswith("aspp.") for k in missing):
            raise GfssModelError(
                f"build_gfss: {backbone_weights!r} does not fit the GFSS trunk: unexpected {unexpected[:5]}, "
                f"missing {[k for k in missing if not k.startswith('aspp.')][:5]}"
            )
    return net


def _batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Return every BatchNorm module of `net`."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(net: nn.Module) -> int:
    """Put every BatchNorm in eval mode with frozen affine parameters (GAPS's incremental stage); return the count.

    net.train() switches them back to training mode: use set_train_mode(net, frozen_bn=True) instead.
    """
    norms = _batchnorms(net)
    for norm in norms:
        norm.eval()
        for param in (norm.weight, norm.bias):
            if param is not None:
                param.requires_grad_(False)
    return len(norms)


def set_train_mode(net: nn.Module, frozen_bn: bool) -> None:
    """Put `net` in training mode; with frozen_bn, every BatchNorm stays in eval mode (running stats untouched)."""
    net.train()
    if frozen_bn:
        for norm in _batchnorms(net):
            norm.eval()


#: GAPS's guards against division by zero in its masked average pooling (non_parametric.py:25, 27).
IMPRINT_EPS = 1e-5


def imprint_vectors(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Return (B, C): GAPS's weight-imprinting vector of each image, computed as its masked_average_pooling does.

    The features are bilinearly upsampled to the mask's size (align_corners False), L2-normalised per pixel
    (norm + 1e-5), then summed over the mask and divided by its pixel count (+ 1e-5) (non_parametric.py:8-28,
    called with normalization=True by GIFS_seg_trainer.py:188). The caller averages the shots' vectors.
    """
    if features.dim() != 4 or masks.dim() != 3 or masks.shape[0] != features.shape[0]:
        raise GfssModelError(
            f"imprint_vectors: features {tuple(features.shape)} and masks {tuple(masks.shape)}; "
            "expected (B, C, h, w) and (B, H, W) with the same B"
        )
    empty = (~masks.flatten(1).bool().any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise GfssModelError(f"imprint_vectors: mask of batch index {empty[0]} has no pixel")
    weights = masks[:, None].to(torch.float32)
    feats = features.float()
    if feats.shape[-2:] != weights.shape[-2:]:
        feats = F.interpolate(feats, size=weights.shape[-2:], mode="bilinear", align_corners=False)
    feats = feats / (feats.norm(p=2, dim=1, keepdim=True) + IMPRINT_EPS)
    return (feats * weights).sum(dim=(2, 3)) / (weights.sum(dim=(2, 3)) + IMPRINT_EPS)


def masked_average_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Return (B, C): each image's features averaged over its mask, the mask resized to the features' size.

    Masks are resized as float maps with antialiased bilinear interpolation and used as weights: every mask pixel
    then keeps some weight, so a small object never vanishes at a coarse feature stride.
    """
    if features.dim() != 4 or masks.dim() != 3 or masks.shape[0] != features.shape[0]:
        raise GfssModelError(
            f"masked_average_pool: features {tuple(features.shape)} and masks {tuple(masks.shape)}; "
            "expected (B, C, h, w) and (B, H, W) with the same B"
        )
    flat = masks.flatten(1).bool()
    empty = (~flat.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise GfssModelError(f"masked_average_pool: mask of batch index {empty[0]} has no pixel")
    weights = F.interpolate(
        masks[:, None].to(features.dtype),
        size=features.shape[-2:],
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
