"""GFSS base stage: DeepLabV3 + cosine head trained on the leakage-free base set with GAPS's recipe."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable

import torch
import yaml

from maskforge.eval.gfss_protocol import ClassMap
from maskforge.eval.seeds import derive_seed
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.gfss.checkpoint import save_gfss
from maskforge.models.gfss.network import GfssNet, GfssSpec, build_gfss, set_train_mode
from maskforge.models.hsnet.backbone import TinySpec
from maskforge.models.train_state import TrainState, clear_resume_states
from maskforge.storage.fs import atomic_write_bytes, join, read_bytes
from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.gfss.feed import BaseFeed, make_loader
from maskforge.tasks.gfss.preflight import BASE_CHECKPOINT, base_schedule, check_base_inputs
from maskforge.tasks.progress import eta

BASE_LOG = "train.json"


def model_spec(config: GfssConfig, num_classes: int) -> GfssSpec:
    """Return the GfssSpec of a config's model section with `num_classes` outputs (background included)."""
    m = config.model
    tiny = TinySpec(tuple(m.tiny_layers), m.tiny_width, m.tiny_maxpool)
    return GfssSpec(m.backbone, num_classes, m.output_stride, m.aspp_channels, tuple(m.aspp_rates), tiny, m.tiny_seed)


def poly_lr(base_lr: float, step: int, total: int, power: float) -> float:
    """Polynomial decay: base_lr * (1 - step / total) ** power (step counted from 0)."""
    return base_lr * (1 - step / total) ** power


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
    state: TrainState | None = None,
    resumed: tuple[int, dict] = (0, {}),
) -> tuple[list[float], float]:
    """Run `steps` SGD steps of cross-entropy (ignore -1) with poly decay; return (mean loss per window, seconds).

    The learning rate is updated every `per_update` steps (an epoch's steps: GAPS's per-epoch poly schedule).
    `resumed` (finished steps, bookkeeping) continues a loop from its TrainState, which `state` saves when due.
    """
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
    done, kept = resumed
    losses, window = kept.get("losses", []), kept.get("window", [])
    start = time.perf_counter() - kept.get("seconds", 0.0)
    updates = -(-steps // per_update)
    for step in range(done, steps):
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
            elapsed = time.perf_counter() - start
            log(f"step {step + 1}/{steps}: loss {losses[-1]:.4f} ({elapsed:.1f} s, {eta(step + 1, steps, elapsed)})")
            window = []
        if state is not None:
            state.maybe_save(step + 1, {"losses": losses, "window": window, "seconds": time.perf_counter() - start})
    return losses, time.perf_counter() - start


def _train(config: GfssConfig, log: Callable[[str], None]) -> dict:
    """The body of train_gfss_base."""
    out, b, m = config.base_dir(), config.base, config.model
    ckpt = join(out, BASE_CHECKPOINT)
    inputs = check_base_inputs(config)  # before the network is built: a wrong input fails in a second
    if inputs is None:
        log(f"already trained: {ckpt}")
        return {**json.loads(read_bytes(join(out, BASE_LOG))), "complete": True}
    dataset, fold, ids = inputs.dataset, inputs.fold, inputs.image_ids
    class_map = ClassMap(tuple(fold.base), ())
    device = resolve_device(config.run.device)
    torch.manual_seed(derive_seed("gfss-base-init", b.seed))
    net = build_gfss(model_spec(config, class_map.num_classes), m.weights).to(device)
    set_train_mode(net, frozen_bn=False)
    steps, per_update = base_schedule(config, len(ids))
    optimiser = torch.optim.SGD(net.parameters(), lr=b.lr, momentum=b.momentum, weight_decay=b.weight_decay)
    state = TrainState(out, "base", steps, {"net": net, "optimiser": optimiser}, {}, config.run.save_every_s)
    resumed = state.restore()
    # DataLoader workers' streams cannot be rewound to a step: a resumed run feeds a fresh stream seeded by the
    # resume step, so it continues the saved weights, optimiser and schedule but is not bit-identical to an
    # uninterrupted run (the one loop of maskforge's learners that is not; the others restore every generator)
    feed_seed = derive_seed("gfss-base-resume", b.seed, resumed[0]) if resumed[0] else b.seed
    epoch_items = 0 if b.steps else per_update * b.batch_size
    feed = BaseFeed(config.dataset, ids, class_map, fold.novel, b.crop_size, tuple(b.scale), feed_seed, epoch_items)
    log(
        f"base stage on {dataset.name} fold {fold.index}: {len(ids)} base images, {class_map.num_classes} classes, "
        f"{steps} steps"
        + ("" if b.steps else f" ({b.epochs} epochs of {per_update})")
        + (f"; resumed at step {resumed[0]}/{steps} from {state.url}" if resumed[0] else "")
    )
    with make_loader(feed, b.batch_size, b.workers, pin=device.type == "cuda") as batches:
        losses, seconds = train_steps(
            net, batches, steps, optimiser, [b.lr], b.poly_power, device, config.run.amp, log, b.log_every,
            per_update, state, resumed,
        )  # fmt: skip
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
    clear_resume_states(out)
    return {**report, "complete": True}
