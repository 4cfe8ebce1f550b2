"""GFSS base stage: DeepLabV3 + cosine head trained on the leakage-free base set with GAPS's recipe."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable

import torch
import yaml

from maskforge.eval.datasets import open_dataset
from maskforge.eval.datasets.base import SegDataset, check_split
from maskforge.eval.folds import Fold, get_fold
from maskforge.eval.gfss_protocol import ClassMap
from maskforge.eval.seeds import derive_seed
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.gfss.checkpoint import save_gfss
from maskforge.models.gfss.network import GfssNet, GfssSpec, build_gfss, set_train_mode
from maskforge.models.hsnet.backbone import TinySpec
from maskforge.storage.fs import atomic_write_bytes, check_output_location, exists, join, read_bytes
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.gfss.feed import BaseFeed, make_loader

BASE_CHECKPOINT = "gfss-base.safetensors"
BASE_LOG = "train.json"


def model_spec(config: GfssConfig, num_classes: int) -> GfssSpec:
    """Return the GfssSpec of a config's model section with `num_classes` outputs (background included)."""
    m = config.model
    tiny = TinySpec(tuple(m.tiny_layers), m.tiny_width, m.tiny_maxpool)
    return GfssSpec(m.backbone, num_classes, m.output_stride, m.aspp_channels, tuple(m.aspp_rates), tiny, m.tiny_seed)


def open_fold(config: GfssConfig) -> tuple[SegDataset, Fold]:
    """Return the configured dataset and its fold table."""
    dataset = open_dataset(config.dataset)
    return dataset, get_fold(dataset.name, config.dataset.fold, config.dataset.coco_fold_mode)


def base_image_ids(dataset: SegDataset, split: str, fold: Fold) -> list[str]:
    """Return the leakage-free base set: images of the split without a single pixel of a novel class (GAPS)."""
    index = dataset.class_index(split)
    novel_images = {i for c in fold.novel for i in index.get(c, [])}
    return [i for i in dataset.image_ids(split) if i not in novel_images]


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    """Polynomial decay: base_lr * (1 - step / total) ** power (step counted from 0)."""
    return base_lr * (1 - step / total) ** power


def base_schedule(config: GfssConfig, base_images: int) -> tuple[int, int]:
    """Return (steps, steps per lr update) of the base stage.

    base.steps 0 (GAPS): epochs x (base_images // batch_size) steps (the last partial batch dropped), the poly lr
    updated once per epoch; base.steps N: N steps, updated every step. Fewer base images than one batch is a
    ConfigError.
    """
    b = config.base
    if b.steps:
        return b.steps, 1
    per_epoch = base_images // b.batch_size
    if per_epoch < 1:
        raise ConfigError(
            f"base.batch_size: {b.batch_size} is more than the {base_images} base images; an epoch would have no "
            "full batch (set a smaller batch or base.steps)"
        )
    return b.epochs * per_epoch, per_epoch


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled (GAPS trains with AMP); a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_gfss_base(config: GfssConfig, log: Callable[[str], None] = print) -> dict:
    """Train the base model on the fold's base set; write checkpoint, config and log into base_dir().

    Returns {"train_dir", "checkpoint", "losses", "steps", "seconds", "base_images", "complete"}. A folder whose
    checkpoint exists is reported, not retrained (its name is the hash of what defines the model). With
    base.checkpoint set there is nothing to train: that file is the base model.
    """
    if config.base.checkpoint:
        raise ConfigError(
            f"base.checkpoint is set ({config.base.checkpoint}): the novel stage starts from it; unset it to train "
            "a base model"
        )
    with torch_threads(config.run.threads):
        return _train(config, log)


def train_steps(
    net: GfssNet,
    batches,
    steps: int,
    optimiser,
    lr_groups: list[float],
    power: float,
    device,
    amp: bool,
    log,
    every,
    per_update: int = 1,
) -> tuple[list[float], float]:
    """Run `steps` SGD steps of cross-entropy (ignore -1) with poly decay; return (mean loss per window, seconds).

    The learning rate is updated every `per_update` steps (an epoch's steps: GAPS's per-epoch poly schedule).
    """
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
    losses, window, start = [], [], time.perf_counter()
    updates = -(-steps // per_update)
    for step in range(steps):
        for group, lr in zip(optimiser.param_groups, lr_groups):
            group["lr"] = poly_lr(lr, step // per_update, updates, power)
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = loss_fn(net(images).float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        window.append(float(loss.detach()))
        if (step + 1) % every == 0 or step + 1 == steps:
            losses.append(sum(window) / len(window))
            log(f"step {step + 1}/{steps}: loss {losses[-1]:.4f} ({time.perf_counter() - start:.1f} s)")
            window = []
    return losses, time.perf_counter() - start


def _train(config: GfssConfig, log: Callable[[str], None]) -> dict:
    """The body of train_gfss_base."""
    out, b, m = config.base_dir(), config.base, config.model
    ckpt = join(out, BASE_CHECKPOINT)
    if exists(ckpt):
        log(f"already trained: {ckpt}")
        return {**json.loads(read_bytes(join(out, BASE_LOG))), "complete": True}
    check_output_location(config.run.out_dir, field="run.out_dir")  # fails now, not after the work
    if m.backbone != "tiny" and not m.weights:
        raise ConfigError(
            f"model.weights is required to train backbone {m.backbone!r}: a local torchvision ResNet-101 ImageNet "
            "state dict (e.g. resnet101-63fe2227.pth); nothing is downloaded"
        )
    dataset, fold = open_fold(config)
    check_split(dataset, b.split, "base.split")
    ids = base_image_ids(dataset, b.split, fold)
    class_map = ClassMap(tuple(fold.base), ())
    device = resolve_device(config.run.device)
    torch.manual_seed(derive_seed("gfss-base-init", b.seed))
    net = build_gfss(model_spec(config, class_map.num_classes), m.weights).to(device)
    set_train_mode(net, frozen_bn=False)
    steps, per_update = base_schedule(config, len(ids))
    epoch_items = 0 if b.steps else per_update * b.batch_size
    feed = BaseFeed(config.dataset, ids, class_map, fold.novel, b.crop_size, tuple(b.scale), b.seed, epoch_items)
    batches = make_loader(feed, b.batch_size, b.workers, pin=device.type == "cuda")
    optimiser = torch.optim.SGD(net.parameters(), lr=b.lr, momentum=b.momentum, weight_decay=b.weight_decay)
    log(
        f"base stage on {dataset.name} fold {fold.index}: {len(ids)} base images, {class_map.num_classes} classes, "
        f"{steps} steps" + ("" if b.steps else f" ({b.epochs} epochs of {per_update})")
    )
    losses, seconds = train_steps(
        net, batches, steps, optimiser, [b.lr], b.poly_power, device, config.run.amp, log, b.log_every, per_update
    )
    report = {
        "train_dir": out,
        "checkpoint": ckpt,
        "losses": losses,
        "steps": steps,
        "epochs": None if b.steps else b.epochs,
        "seconds": round(seconds, 2),
        "base_images": len(ids),
        "num_classes": class_map.num_classes,
        "base_classes": list(fold.base),
    }
    atomic_write_bytes(join(out, "config.yaml"), yaml.safe_dump(config.resolved(), sort_keys=False).encode())
    atomic_write_bytes(join(out, BASE_LOG), json.dumps(report, indent=2).encode())
    net.eval()
    save_gfss(ckpt, net.cpu(), config.resolved(), {"stage": "base", "class_map": {"base": list(fold.base)}})
    return {**report, "complete": True}
