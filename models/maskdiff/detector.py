"""TFA few-shot detector on torchvision's Faster R-CNN: build, randinit surgery, last-layer fine-tuning, checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from maskforge.eval.instances import Instance
from maskforge.models.weights_file import WeightsFileError, load_weights_only
from maskforge.storage.fs import atomic_write_bytes, file_problem

#: Backbone names a DetectorSpec accepts; "tiny" is a small random conv stack for tests and the toy world.
DETECTOR_BACKBONES: tuple[str, ...] = ("resnet50", "tiny")
#: Value of the "format" metadata entry of a detector checkpoint.
DETECTOR_FORMAT = "maskforge-maskdiff-detector/1"
#: TFA's fixed cosine scale (cfg.MODEL.ROI_HEADS.COSINE_SCALE = 20).
COSINE_SCALE = 20.0
#: TFA's randinit standard deviations for novel rows (classifier, box regressor); biases start at 0.
CLS_INIT_STD = 0.01
BBOX_INIT_STD = 0.001

#: Anchor side per FPN level of the tiny backbone (strides 4, 8, 16 and the max-pooled 32), for 64-px images.
_TINY_ANCHORS: tuple[tuple[int, ...], ...] = ((8,), (16,), (32,), (64,))
#: RPN and ROI sampling budget of the tiny detector: a CPU step on four 64-px images stays far below a second.
_TINY_BUDGET = {
    "rpn_pre_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 150,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
}


class DetectorError(ValueError):
    """A detector cannot be built, trained, converted or loaded as asked (the message names the field or file)."""


def _check_int(name: str, value: object, low: int, high: int) -> None:
    """Raise DetectorError naming `name` unless value is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DetectorError(f"DetectorSpec.{name}: {value!r}; expected an integer in {low}..{high}")


@dataclass(frozen=True)
class DetectorSpec:
    """What defines a detector: backbone, foreground class count, resize sizes, tiny widths, detections, init seed."""

    backbone: str
    #: Foreground classes; torchvision adds the background at label 0, so labels run 1..num_classes.
    num_classes: int
    #: GeneralizedRCNNTransform's resize: shorter side to min_size unless the longer one would pass max_size.
    min_size: int = 800
    max_size: int = 1333
    #: Tiny backbone: channels of its three stages (output strides 4, 8, 16), FPN channels and box-head width.
    tiny_widths: tuple[int, int, int] = (16, 32, 64)
    tiny_fpn_channels: int = 32
    tiny_head_size: int = 128
    detections_per_img: int = 100
    #: Seeds every random initial weight (the global RNG is restored afterwards).
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject values a detector cannot be built with (the message names the field)."""
        if self.backbone not in DETECTOR_BACKBONES:
            raise DetectorError(
                f"DetectorSpec.backbone: unknown backbone {self.backbone!r}; "
                f"expected one of {', '.join(DETECTOR_BACKBONES)}"
            )
        _check_int("num_classes", self.num_classes, 1, 1000)
        _check_int("min_size", self.min_size, 32, 2048)
        _check_int("max_size", self.max_size, 32, 2048)
        if self.min_size > self.max_size:
            raise DetectorError(
                f"DetectorSpec.min_size: {self.min_size} is above max_size {self.max_size}; expected min <= max"
            )
        widths = tuple(self.tiny_widths)
        if len(widths) != 3:
            raise DetectorError(f"DetectorSpec.tiny_widths: {self.tiny_widths!r}; expected three integers")
        for width in widths:
            _check_int("tiny_widths", width, 1, 1024)
        object.__setattr__(self, "tiny_widths", widths)
        _check_int("tiny_fpn_channels", self.tiny_fpn_channels, 1, 1024)
        _check_int("tiny_head_size", self.tiny_head_size, 1, 4096)
        _check_int("detections_per_img", self.detections_per_img, 1, 1000)
        _check_int("seed", self.seed, 0, 2**63 - 1)

    def to_dict(self) -> dict:
        """Return JSON-compatible data (stored in checkpoint metadata)."""
        return {
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "tiny_widths": list(self.tiny_widths),
            "tiny_fpn_channels": self.tiny_fpn_channels,
            "tiny_head_size": self.tiny_head_size,
            "detections_per_img": self.detections_per_img,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> DetectorSpec:
        """Rebuild a spec from to_dict()'s output; unknown keys are an error naming them."""
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(data) - known)
        if extra:
            raise DetectorError(f"DetectorSpec: unknown fields {extra}; expected some of {sorted(known)}")
        values = dict(data)
        if "tiny_widths" in values:
            values["tiny_widths"] = tuple(values["tiny_widths"])
        return cls(**values)


def tiny_spec(num_classes: int, seed: int = 0) -> DetectorSpec:
    """Return the toy world's detector spec: tiny backbone, 64-px images, 20 detections per image."""
    return DetectorSpec("tiny", num_classes, min_size=64, max_size=64, detections_per_img=20, seed=seed)


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 conv, GroupNorm and ReLU; GroupNorm because toy batches are too small for batch statistics."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(math.gcd(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class TinyTrunk(nn.Sequential):
    """Stem (stride 2) and three stages (strides 4, 8, 16) of conv-GroupNorm-ReLU blocks; BackboneWithFPN reads
    layer1..layer3."""

    def __init__(self, widths: tuple[int, int, int]) -> None:
        w1, w2, w3 = widths
        super().__init__()
        self.stem = _conv_block(3, w1, 2)
        self.layer1 = nn.Sequential(_conv_block(w1, w1, 2), _conv_block(w1, w1, 1))
        self.layer2 = nn.Sequential(_conv_block(w1, w2, 2), _conv_block(w2, w2, 1))
        self.layer3 = nn.Sequential(_conv_block(w2, w3, 2), _conv_block(w3, w3, 1))


def _tiny_detector(spec: DetectorSpec) -> FasterRCNN:
    """Build the tiny Faster R-CNN: TinyTrunk + FPN (plus torchvision's max-pool level), small anchors and budget."""
    backbone = BackboneWithFPN(
        TinyTrunk(spec.tiny_widths),
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2"},
        in_channels_list=list(spec.tiny_widths),
        out_channels=spec.tiny_fpn_channels,
    )
    anchors = AnchorGenerator(sizes=_TINY_ANCHORS, aspect_ratios=((0.5, 1.0, 2.0),) * len(_TINY_ANCHORS))
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=spec.min_size,
        max_size=spec.max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(spec.tiny_fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(spec.tiny_fpn_channels * 7 * 7, spec.tiny_head_size),
        box_predictor=FastRCNNPredictor(spec.tiny_head_size, spec.num_classes + 1),
        box_detections_per_img=spec.detections_per_img,
        **_TINY_BUDGET,
    )


def _resnet50_detector(spec: DetectorSpec) -> FasterRCNN:
    """Build fasterrcnn_resnet50_fpn as torchvision does with an ImageNet backbone, but with weights=None.

    That is FrozenBatchNorm2d in the trunk and stem + layer1 frozen (trainable_backbone_layers=3), as TFA's
    detectron2 recipe (FrozenBN, FREEZE_AT=2); torchvision's weights_backbone=None path would instead train
    BatchNorm2d statistics on detection-sized batches. Key names are torchvision's.
    """
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    return FasterRCNN(
        backbone,
        num_classes=spec.num_classes + 1,
        min_size=spec.min_size,
        max_size=spec.max_size,
        box_detections_per_img=spec.detections_per_img,
    )


def build_detector(spec: DetectorSpec, backbone_weights: str | None = None) -> FasterRCNN:
    """Build a Faster R-CNN for `spec` with seeded random weights; `backbone_weights` (resnet50 only) is a local
    torchvision ResNet-50 ImageNet state dict (.pth/.pt or .safetensors) loaded strictly into backbone.body.

    Nothing is ever downloaded. The box predictor is torchvision's linear FastRCNNPredictor over background + classes.
    """
    if backbone_weights is not None:
        if spec.backbone != "resnet50":
            raise DetectorError(
                f"build_detector: backbone {spec.backbone!r} takes no pretrained weights, got {backbone_weights!r}"
            )
        if not Path(backbone_weights).is_file():
            raise DetectorError(
                f"build_detector: backbone weights file {backbone_weights!r} not found; expected a local torchvision "
                "resnet50 state dict (.pth or .safetensors); nothing is downloaded"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = _tiny_detector(spec) if spec.backbone == "tiny" else _resnet50_detector(spec)
    if backbone_weights is not None:
        load_backbone_file(model, backbone_weights)
    return model


def _read_state(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or .pth/.pt (torch.load with weights_only, never code)."""
    file = Path(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise DetectorError(f"{path!r} is not a readable safetensors file: {err}") from None
    if file.suffix not in (".pth", ".pt"):
        raise DetectorError(f"{path!r}: unknown suffix {file.suffix!r}; expected .pth, .pt or .safetensors")
    try:
        state = load_weights_only(file)
    except WeightsFileError as err:
        raise DetectorError(str(err)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DetectorError(f"{path!r} holds a {type(state).__name__}, expected a state dict of tensors")
    return state


def _differences(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """Return one line listing missing, unexpected and mis-shaped keys of `state` (empty when they match)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in sorted(expected.items())
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = [
        f"{len(keys)} {name} {keys[:5]}"
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", shapes))
        if keys
    ]
    return "; ".join(parts)


def load_backbone_file(model: FasterRCNN, path: str) -> None:
    """Load a local torchvision ResNet-50 state dict into model.backbone.body strictly; only fc.* is dropped (and BN
    step counters, which FrozenBatchNorm2d does not keep). Any other key difference is an error naming the file."""
    if problem := file_problem(path):
        raise DetectorError(f"backbone weights file {path!r} {problem}; expected a local torchvision resnet50 file")
    body = model.backbone.body
    expected = body.state_dict()
    state = {
        k: v
        for k, v in _read_state(path).items()
        if not k.startswith("fc.") and not (k.endswith(".num_batches_tracked") and k not in expected)
    }
    problems = _differences(expected, state)
    if problems:
        raise DetectorError(f"backbone weights {path!r} do not fit a torchvision resnet50 trunk: {problems}")
    body.load_state_dict(state, strict=True)


class CosineBoxPredictor(nn.Module):
    """TFA's cosine box predictor: scores = scale x cosine(feature, class weight) without bias; class-specific
    linear box deltas (4 per class, background included) as in torchvision's FastRCNNPredictor."""

    def __init__(self, in_channels: int, num_classes_with_bg: int, scale: float = COSINE_SCALE) -> None:
        super().__init__()
        self.scale = float(scale)
        self.cls_score = nn.Linear(in_channels, num_classes_with_bg, bias=False)
        self.bbox_pred = nn.Linear(in_channels, num_classes_with_bg * 4)
        nn.init.normal_(self.cls_score.weight, std=CLS_INIT_STD)
        nn.init.normal_(self.bbox_pred.weight, std=BBOX_INIT_STD)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (scores (N, classes), box deltas (N, 4 x classes)) of ROI features (N, C) or (N, C, 1, 1)."""
        x = x.flatten(start_dim=1)
        # eps only guards all-zero ROI features (post-ReLU box heads can give them): their scores become 0
        cosine = F.linear(F.normalize(x, dim=1, eps=1e-5), F.normalize(self.cls_score.weight, dim=1, eps=1e-5))
        return self.scale * cosine, self.bbox_pred(x)


def predictor_kind(model: FasterRCNN) -> str:
    """Return "linear" (FastRCNNPredictor) or "cosine" (CosineBoxPredictor) for the model's box predictor."""
    predictor = model.roi_heads.box_predictor
    if isinstance(predictor, CosineBoxPredictor):
        return "cosine"
    if isinstance(predictor, FastRCNNPredictor):
        return "linear"
    raise DetectorError(
        f"roi_heads.box_predictor is a {type(predictor).__name__}; expected FastRCNNPredictor or CosineBoxPredictor"
    )


def num_foreground(model: FasterRCNN) -> int:
    """Return the model's foreground class count (its predictor's classifier rows minus the background)."""
    predictor_kind(model)
    return model.roi_heads.box_predictor.cls_score.out_features - 1


def _check_ids(name: str, ids: list[int]) -> None:
    """Raise DetectorError naming `name` unless ids are distinct positive ints."""
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in ids):
        raise DetectorError(f"{name}: {ids!r}; expected positive integer class ids")
    if len(set(ids)) != len(ids):
        raise DetectorError(f"{name}: {ids!r} repeats a class id")


def surgery_randinit(
    model: FasterRCNN,
    base_ids: list[int],
    novel_ids: list[int],
    all_ids: list[int],
    seed: int = 0,
    cosine: bool = False,
) -> FasterRCNN:
    """TFA's "randinit" checkpoint surgery, in place: a new box predictor over background + all_ids (label i + 1 is
    all_ids[i]); background and base rows (classifier and box deltas) copied from the base model's predictor (whose
    label i + 1 is base_ids[i]), novel rows drawn from a `seed`ed N(0, 0.01) / N(0, 0.001), biases 0.

    cosine=True installs a CosineBoxPredictor (scale 20) that takes the base classifier weights without their bias.
    """
    kind = predictor_kind(model)
    if kind == "cosine" and not cosine:
        raise DetectorError("surgery_randinit: the base model has a cosine predictor; expected cosine=True")
    for name, ids in (("base_ids", base_ids), ("novel_ids", novel_ids), ("all_ids", all_ids)):
        _check_ids(f"surgery_randinit: {name}", list(ids))
    if set(base_ids) & set(novel_ids):
        raise DetectorError(f"surgery_randinit: classes {sorted(set(base_ids) & set(novel_ids))} are base and novel")
    if sorted(all_ids) != sorted(list(base_ids) + list(novel_ids)):
        raise DetectorError(
            f"surgery_randinit: all_ids {list(all_ids)} must hold exactly the base and novel ids "
            f"{sorted(list(base_ids) + list(novel_ids))}"
        )
    old = model.roi_heads.box_predictor
    if old.cls_score.out_features != len(base_ids) + 1:
        raise DetectorError(
            f"surgery_randinit: the base predictor has {old.cls_score.out_features} classifier rows, expected "
            f"{len(base_ids) + 1} (background + base_ids)"
        )
    in_channels = old.cls_score.in_features
    total = len(all_ids) + 1
    generator = torch.Generator().manual_seed(seed)
    cls_weight = torch.randn(total, in_channels, generator=generator) * CLS_INIT_STD
    box_weight = torch.randn(total * 4, in_channels, generator=generator) * BBOX_INIT_STD
    cls_bias = torch.zeros(total)
    box_bias = torch.zeros(total * 4)
    old_row = {0: 0} | {new + 1: base_ids.index(c) + 1 for new, c in enumerate(all_ids) if c in base_ids}
    with torch.no_grad():
        for new, src in old_row.items():
            cls_weight[new] = old.cls_score.weight[src].detach().cpu().float()
            if old.cls_score.bias is not None:
                cls_bias[new] = old.cls_score.bias[src].detach().cpu().float()
            box_weight[4 * new : 4 * new + 4] = old.bbox_pred.weight[4 * src : 4 * src + 4].detach().cpu().float()
            box_bias[4 * new : 4 * new + 4] = old.bbox_pred.bias[4 * src : 4 * src + 4].detach().cpu().float()
        scale = old.scale if kind == "cosine" else COSINE_SCALE
        new_predictor = (
            CosineBoxPredictor(in_channels, total, scale) if cosine else FastRCNNPredictor(in_channels, total)
        )
        new_predictor.cls_score.weight.copy_(cls_weight)
        if not cosine:
            new_predictor.cls_score.bias.copy_(cls_bias)
        new_predictor.bbox_pred.weight.copy_(box_weight)
        new_predictor.bbox_pred.bias.copy_(box_bias)
    model.roi_heads.box_predictor = new_predictor.to(
        device=old.cls_score.weight.device, dtype=old.cls_score.weight.dtype
    )
    return model


def freeze_for_finetune(model: FasterRCNN) -> list[str]:
    """Freeze every parameter except roi_heads.box_predictor's (TFA fine-tunes the last layer); return the names
    of the parameters left trainable."""
    trainable = []
    for name, param in model.named_parameters():
        keep = name.startswith("roi_heads.box_predictor.")
        param.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable


def _check_images(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Return images as a list after checking each is a float CHW tensor with 3 channels."""
    images = list(images)
    if not images:
        raise DetectorError("images: the list is empty; expected at least one CHW float image")
    for i, image in enumerate(images):
        if (
            not isinstance(image, torch.Tensor)
            or image.dim() != 3
            or image.shape[0] != 3
            or not image.is_floating_point()
        ):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise DetectorError(f"images[{i}]: {shape}; expected a float tensor (3, H, W) in [0, 1]")
    return images


def detector_loss(
    model: FasterRCNN, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Return torchvision's training losses (RPN objectness/box, ROI classifier/box) of images (CHW in [0, 1]) and
    targets {"boxes": (N, 4) xyxy float, "labels": (N,) int64 in 1..C}; N = 0 is a negative image. Leaves the
    model in train mode."""
    images = _check_images(images)
    if len(targets) != len(images):
        raise DetectorError(f"targets: {len(targets)} for {len(images)} images; expected one per image")
    classes = num_foreground(model)
    for i, target in enumerate(targets):
        boxes, labels = target.get("boxes"), target.get("labels")
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise DetectorError(f"targets[{i}]['boxes']: expected a (N, 4) xyxy tensor")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (len(boxes),):
            raise DetectorError(f"targets[{i}]['labels']: expected a ({len(boxes)},) int64 tensor")
        if len(labels) and (labels.min() < 1 or labels.max() > classes):
            raise DetectorError(f"targets[{i}]['labels']: {labels.tolist()}; expected labels in 1..{classes}")
    model.train()
    return model(images, targets)


def detect(model: FasterRCNN, images: list[torch.Tensor], score_threshold: float = 0.05) -> list[dict]:
    """Return per image {"boxes" (N, 4) xyxy, "labels" (N,) in 1..C, "scores" (N,)} with scores > score_threshold
    (the ROI heads' own threshold for this call, so it acts before NMS and the per-image cap), eval mode, no grad."""
    images = _check_images(images)
    if not 0.0 <= float(score_threshold) < 1.0:
        raise DetectorError(f"detect: score_threshold {score_threshold!r}; expected a value in [0, 1)")
    model.eval()
    saved = model.roi_heads.score_thresh
    model.roi_heads.score_thresh = float(score_threshold)
    try:
        with torch.no_grad():
            outputs = model(images)
    finally:
        model.roi_heads.score_thresh = saved
    return [{"boxes": o["boxes"], "labels": o["labels"], "scores": o["scores"]} for o in outputs]


def labels_for(class_ids: list[int]) -> dict[int, int]:
    """Return {class id: torchvision label}: class_ids[i] is label i + 1 (0 is the background)."""
    _check_ids("class_ids", list(class_ids))
    return {int(c): i + 1 for i, c in enumerate(class_ids)}


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """Return a uint8 HxWx3 image as the detector's CHW float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)


def instances_to_target(
    instances: list[Instance], class_to_label: dict[int, int], skip_crowd: bool = True
) -> dict[str, torch.Tensor]:
    """Return a torchvision target {"boxes": (N, 4) float32 xyxy, "labels": (N,) int64} of visible-pixel instances.

    A COCO box [x, y, w, h] becomes [x, y, x + w, y + h] (pixel edges). Crowd instances are dropped (TFA ignores
    crowd) unless skip_crowd is False, which keeps them as ordinary boxes. A class missing from class_to_label is an
    error (drop such instances first), as is an instance without visible pixels.
    """
    boxes, labels = [], []
    for i, inst in enumerate(instances):
        if inst.iscrowd and skip_crowd:
            continue
        if inst.class_id not in class_to_label:
            raise DetectorError(
                f"instances[{i}]: class {inst.class_id} has no label; expected one of {sorted(class_to_label)}"
            )
        label = class_to_label[inst.class_id]
        if isinstance(label, bool) or not isinstance(label, int) or label < 1:
            raise DetectorError(f"class_to_label[{inst.class_id}]: {label!r}; expected a label >= 1")
        if not inst.mask.any():
            raise DetectorError(f"instances[{i}]: class {inst.class_id} has no visible pixel; expected a box")
        boxes.append(inst.xyxy)
        labels.append(label)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def save_detector(path: str, model: FasterRCNN, spec: DetectorSpec, class_ids: list[int], metadata: dict) -> None:
    """Write every model tensor as safetensors (atomically); spec, class ids (label i + 1 = class_ids[i]),
    predictor type/scale and `metadata` go as JSON into the file's metadata."""
    from safetensors.torch import save

    _check_ids("save_detector: class_ids", list(class_ids))
    if len(class_ids) != spec.num_classes or num_foreground(model) != spec.num_classes:
        raise DetectorError(
            f"save_detector: spec.num_classes {spec.num_classes}, {len(class_ids)} class_ids and "
            f"{num_foreground(model)} predictor classes must agree"
        )
    kind = predictor_kind(model)
    predictor = {"type": kind, "scale": model.roi_heads.box_predictor.scale if kind == "cosine" else None}
    try:
        extra = json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise DetectorError(f"save_detector: metadata is not JSON-serialisable: {err}") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    header = {
        "format": DETECTOR_FORMAT,
        "spec": json.dumps(spec.to_dict(), sort_keys=True),
        "class_ids": json.dumps([int(c) for c in class_ids]),
        "predictor": json.dumps(predictor, sort_keys=True),
        "metadata": extra,
    }
    atomic_write_bytes(path, save(tensors, metadata=header))


def load_detector(path: str) -> tuple[FasterRCNN, DetectorSpec, list[int], dict]:
    """Load save_detector's file strictly: (model in eval mode with its linear or cosine predictor, spec, class ids,
    metadata); any key or shape difference is an error naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if problem := file_problem(path):
        raise DetectorError(f"detector checkpoint {path!r} {problem}; expected a .safetensors file")
    try:
        with safe_open(path, framework="pt") as handle:
            raw = handle.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise DetectorError(f"detector checkpoint {path!r} is not a readable safetensors file: {err}") from None
    if raw.get("format") != DETECTOR_FORMAT:
        raise DetectorError(f"detector checkpoint {path!r}: format {raw.get('format')!r}, expected {DETECTOR_FORMAT!r}")
    try:
        meta = {name: json.loads(raw[name]) for name in ("spec", "class_ids", "predictor", "metadata")}
    except (KeyError, json.JSONDecodeError) as err:
        raise DetectorError(f"detector checkpoint {path!r}: metadata entry {err} missing or not JSON") from None
    try:
        spec = DetectorSpec.from_dict(meta["spec"])
    except (TypeError, DetectorError) as err:
        raise DetectorError(f"detector checkpoint {path!r}: bad spec: {err}") from None
    predictor = meta["predictor"]
    model = build_detector(spec)
    if predictor.get("type") == "cosine":
        linear = model.roi_heads.box_predictor
        model.roi_heads.box_predictor = CosineBoxPredictor(
            linear.cls_score.in_features, linear.cls_score.out_features, float(predictor["scale"])
        )
    elif predictor.get("type") != "linear":
        raise DetectorError(f"detector checkpoint {path!r}: predictor type {predictor!r}, expected linear or cosine")
    problems = _differences(model.state_dict(), state)
    if problems:
        raise DetectorError(f"detector checkpoint {path!r} does not match its spec: {problems}")
    model.load_state_dict(state, strict=True)
    class_ids = [int(c) for c in meta["class_ids"]]
    if len(class_ids) != spec.num_classes:
        raise DetectorError(
            f"detector checkpoint {path!r}: {len(class_ids)} class_ids for spec.num_classes {spec.num_classes}"
        )
    return model.eval(), spec, class_ids, meta["metadata"]
