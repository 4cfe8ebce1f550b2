"""HSNet episodic training on a fold's base classes (Adam, cross-entropy), optionally with synthetic supports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch
import yaml

from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.episode_data import SYNTHETIC_PREFIX, EpisodeImages, binary_target
from maskforge.eval.hsnet_episodes import TrainEpisodes
from maskforge.eval.seeds import derive_seed
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.hsnet.backbone import TinySpec, calibrate_batchnorm
from maskforge.models.hsnet.checkpoint import save_checkpoint
from maskforge.models.hsnet.model import HSNet, HSNetSpec, build_hsnet, learnable_parameters
from maskforge.models.hsnet.segmenter import prepare_images, prepare_labels
from maskforge.models.train_state import TrainState, clear_resume_states
from maskforge.storage.fs import atomic_write_bytes, exists, join, read_bytes
from maskforge.tasks.hsnet.config import HsnetConfig
from maskforge.tasks.hsnet.preflight import CHECKPOINT_NAME, check_train_inputs
from maskforge.tasks.progress import eta

TRAIN_LOG_NAME = "train.json"


def model_spec(config: HsnetConfig) -> HSNetSpec:
    """Return the HSNetSpec a config's model section describes."""
    m = config.model
    return HSNetSpec(m.backbone, m.img_size, TinySpec(tuple(m.tiny_layers), m.tiny_width, m.tiny_maxpool), m.tiny_seed)


def calibrate_tiny(net: HSNet, dataset: SegDataset, split: str, n_images: int, size: int, device: torch.device) -> None:
    """Estimate the tiny backbone's BatchNorm statistics on the first n_images of a split (deterministic)."""
    ids = dataset.image_ids(split)[:n_images]
    batches = [
        prepare_images([dataset.load(i).image for i in ids[b : b + 32]], size, device) for b in range(0, len(ids), 32)
    ]
    calibrate_batchnorm(net.backbone, batches)


def train_hsnet(config: HsnetConfig, log: Callable[[str], None] = print) -> dict:
    """Train the HPNLearner on 1-shot episodes of the fold's base classes; write checkpoint, config and log.

    Returns {"train_dir", "checkpoint", "losses" (mean per log window), "steps", "seconds", "complete"}. A folder
    whose checkpoint exists is reported, not retrained (the folder name is the hash of what defines the model).
    Runs with run.threads torch CPU threads (restored afterwards).
    """
    with torch_threads(config.run.threads):
        return _train(config, log)


def _train(config: HsnetConfig, log: Callable[[str], None]) -> dict:
    """The body of train_hsnet."""
    out = config.train_dir()
    ckpt = join(out, CHECKPOINT_NAME)
    if exists(ckpt):
        log(f"already trained: {ckpt}")
        return {**json.loads(read_bytes(join(out, TRAIN_LOG_NAME))), "complete": True}
    inputs = check_train_inputs(config)  # before the network is built: a wrong input fails in a second
    m, t = config.model, config.train
    dataset, fold, run = inputs.dataset, inputs.fold, inputs.run
    device = resolve_device(config.run.device)
    torch.manual_seed(derive_seed("hsnet-learner-init", t.seed))
    net = build_hsnet(model_spec(config), m.weights).to(device)
    index = dataset.class_index(t.split)
    if m.backbone == "tiny" and m.tiny_calibration_images:
        calibrate_tiny(net, dataset, t.split, m.tiny_calibration_images, m.img_size, device)
    extra = {c: [SYNTHETIC_PREFIX + k for k in ks] for c, ks in inputs.synthetic.items()}
    episodes = TrainEpisodes(
        index, fold.base, t.seed, f"{dataset.name} fold {fold.index} split {t.split} (training)", extra
    )
    images = EpisodeImages(dataset, run)
    optimiser = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=t.lr)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
    size = m.img_size
    net.train()
    state = TrainState(
        out, "hsnet", t.steps, {"net": net, "optimiser": optimiser}, {"episodes": episodes.rng}, config.run.save_every_s
    )
    done, kept = state.restore()
    losses, window, synthetic_draws = kept.get("losses", []), kept.get("window", []), kept.get("synthetic_draws", 0)
    start = time.perf_counter() - kept.get("seconds", 0.0)
    log(
        f"training HSNet({m.backbone}) on {dataset.name} fold {fold.index}: "
        f"{learnable_parameters(net)} learnable parameters"
        + (f"; resumed at step {done}/{t.steps} from {state.url}" if done else "")
    )
    for step in range(done + 1, t.steps + 1):
        batch = [episodes.next() for _ in range(t.batch_size)]
        queries = [images.get(e.query_id) for e in batch]
        supports = [images.get(e.support_ids[0]) for e in batch]
        synthetic_draws += sum(e.support_ids[0].startswith(SYNTHETIC_PREFIX) for e in batch)
        q = prepare_images([img for img, _ in queries], size, device)
        target = prepare_labels([binary_target(lab, e.class_id) for (_, lab), e in zip(queries, batch)], size, device)
        s = prepare_images([img for img, _ in supports], size, device)
        s_mask = prepare_labels([lab == e.class_id for (_, lab), e in zip(supports, batch)], size, device)
        logits = net(q, s, s_mask)
        loss = loss_fn(logits, target.long())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        window.append(float(loss.detach()))
        if step % t.log_every == 0 or step == t.steps:
            losses.append(sum(window) / len(window))
            elapsed = time.perf_counter() - start
            log(f"step {step}/{t.steps}: loss {losses[-1]:.4f} ({elapsed:.1f} s, {eta(step, t.steps, elapsed)})")
            window = []
        state.maybe_save(
            step,
            {
                "losses": losses,
                "window": window,
                "synthetic_draws": synthetic_draws,
                "seconds": time.perf_counter() - start,
            },
        )
    seconds = time.perf_counter() - start
    report = {
        "train_dir": out,
        "checkpoint": ckpt,
        "losses": losses,
        "steps": t.steps,
        "seconds": round(seconds, 2),
        "learnable_parameters": learnable_parameters(net),
        "synthetic_support_draws": synthetic_draws,
    }
    atomic_write_bytes(join(out, "config.yaml"), yaml.safe_dump(config.resolved(), sort_keys=False).encode())
    atomic_write_bytes(join(out, TRAIN_LOG_NAME), json.dumps(report, indent=2).encode())
    save_checkpoint(ckpt, net.cpu(), config.resolved(), {"train": report})  # written last: it marks completion
    clear_resume_states(out)
    return {**report, "complete": True}
