"""Frozen backbones, feature pyramids: torchvision ResNet-50/101 and VGG16 from local files, or a tiny ResNet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50, resnet101, vgg16
from torchvision.models.resnet import Bottleneck, ResNet

from maskforge.models.weights_file import WeightsFileError, load_weights_only

#: Backbone names the model understands; "tiny" is a small random ResNet for tests and the toy demo.
BACKBONES: tuple[str, ...] = ("resnet50", "resnet101", "vgg16", "tiny")

#: VGG16 `features` indices HSNet reads: conv4_1..3, conv5_1..3 (pre-ReLU conv outputs) and pool5.
VGG_FEAT_IDS: tuple[int, ...] = (17, 19, 21, 24, 26, 28, 30)
#: Layer groups of those VGG16 features (level 2 = conv4_x, level 3 = conv5_x, level 4 = pool5).
VGG_LEVELS: tuple[int, ...] = (2, 2, 2, 3, 3, 3, 4)

#: ImageNet normalisation applied to every input image (RGB in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """A backbone cannot be built or loaded as asked (the message names the backbone, file or key)."""


class TinyBottleneck(Bottleneck):
    """torchvision's Bottleneck with expansion 1: same module names (conv1-3, bn1-3, downsample), small widths."""

    expansion = 1


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny ResNet: bottlenecks per layer (layer1..layer4), width per group, and the stem max-pool."""

    layers: tuple[int, int, int, int] = (1, 2, 2, 2)
    width_per_group: int = 16
    #: False drops the stem's max-pool (no parameters, so no key changes): output stride 16, finer maps at 64-128 px.
    maxpool: bool = False


def build_tiny(spec: TinySpec = TinySpec(), seed: int = 0) -> ResNet:
    """Return a small random torchvision ResNet (TinyBottleneck, channels 64/128/256/512), seeded for determinism."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ResNet(TinyBottleneck, list(spec.layers), num_classes=10, width_per_group=spec.width_per_group)
    finally:
        torch.random.set_rng_state(generator_state)
    if not spec.maxpool:
        model.maxpool = nn.Identity()
    return model


@torch.no_grad()
def calibrate_batchnorm(backbone: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on normalised images.

    Used for the random tiny backbone: with identity statistics its channels share a large common component and
    cosine correlations barely separate foreground from background; data statistics centre them, as ImageNet
    training does for real backbones. The backbone is back in eval mode (frozen) afterwards.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    backbone.train()
    try:
        for batch in batches:
            extract_features(backbone, batch)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        backbone.eval()


def build_backbone(name: str, weights: str | None, tiny: TinySpec = TinySpec(), tiny_seed: int = 0) -> nn.Module:
    """Build a backbone with torchvision's module names; load `weights` (a local state-dict file) when given.

    Nothing is downloaded: torchvision models are built with weights=None. `weights=None` leaves random weights,
    which is right for "tiny" and for loading a full HSNet checkpoint (it carries the backbone) afterwards.
    """
    if name == "resnet50":
        model: nn.Module = resnet50(weights=None)
    elif name == "resnet101":
        model = resnet101(weights=None)
    elif name == "vgg16":
        model = vgg16(weights=None)
    elif name == "tiny":
        model = build_tiny(tiny, tiny_seed)
    else:
        raise BackboneError(f"model.backbone: unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if weights is not None:
        load_backbone_weights(model, name, weights)
    return model


def load_backbone_weights(model: nn.Module, name: str, path: str) -> None:
    """Load a local torchvision (or timm ResNet) state-dict file (.pth/.pt or .safetensors) into a backbone, strictly.

    Only BatchNorm `num_batches_tracked` counters may be absent (timm's files omit them); any other missing,
    unexpected or mis-shaped key is a BackboneError.
    """
    file = Path(path)
    if not file.is_file():
        raise BackboneError(
            f"model.weights: backbone weights file {path!r} not found; expected a local torchvision {name} "
            "state dict (.pth or .safetensors); nothing is downloaded"
        )
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        try:
            state = load_weights_only(file)
        except WeightsFileError as err:
            raise BackboneError(f"model.weights: {err}") from None
    if not isinstance(state, dict):
        raise BackboneError(f"model.weights: {path!r} holds a {type(state).__name__}, expected a state dict")
    expected = model.state_dict()
    # timm's ResNet files use torchvision's names but may omit BN step counters, which eval-mode BN never reads
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key].clone()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise BackboneError(
            f"model.weights: {path!r} is not a torchvision {name} state dict: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)


def pyramid_counts(name: str, tiny: TinySpec = TinySpec()) -> tuple[int, int, int]:
    """Return the number of feature maps per level, deepest first: (level 4, level 3, level 2) = HPNLearner's inch."""
    if name == "resnet50":
        return (3, 6, 4)
    if name == "resnet101":
        return (3, 23, 4)
    if name == "vgg16":
        return (1, 3, 3)
    if name == "tiny":
        return (tiny.layers[3], tiny.layers[2], tiny.layers[1])
    raise BackboneError(f"model.backbone: unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")


def _bottleneck_pre_relu(block: Bottleneck, x: torch.Tensor) -> torch.Tensor:
    """Run a torchvision Bottleneck and return its output after the residual add, before the final ReLU."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    return block.bn3(block.conv3(out)) + identity


def extract_features(backbone: nn.Module, images: torch.Tensor) -> list[list[torch.Tensor]]:
    """Return the feature pyramid of normalised images as [level 4 maps, level 3 maps, level 2 maps].

    ResNet: every bottleneck of layer2..layer4 after the residual add, before its ReLU. VGG16: conv4_1..conv5_3
    before their ReLU, and pool5.
    """
    levels: dict[int, list[torch.Tensor]] = {2: [], 3: [], 4: []}
    if isinstance(backbone, ResNet):
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(images))))
        x = backbone.layer1(x)
        for level, layer in ((2, backbone.layer2), (3, backbone.layer3), (4, backbone.layer4)):
            for block in layer:
                pre = _bottleneck_pre_relu(block, x)
                levels[level].append(pre)
                x = torch.relu(pre)
    elif hasattr(backbone, "features") and isinstance(backbone.features, nn.Sequential):
        x = images
        wanted = dict(zip(VGG_FEAT_IDS, VGG_LEVELS))
        for idx, layer in enumerate(backbone.features):
            if isinstance(layer, nn.ReLU):
                x = torch.relu(x)  # never in place: the pre-ReLU tensor may have been recorded
            else:
                x = layer(x)
            if idx in wanted:
                levels[wanted[idx]].append(x)
            if idx >= VGG_FEAT_IDS[-1]:
                break
    else:
        raise BackboneError(
            f"unsupported backbone module {type(backbone).__name__}; expected a torchvision ResNet or VGG"
        )
    return [levels[4], levels[3], levels[2]]
