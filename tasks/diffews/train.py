"""DiffewS episodic training on a fold's base classes: OI2M (one step, clean query latent, target -z_mask), AdamW."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from maskforge.eval.episode_data import EpisodeImages
from maskforge.eval.hsnet_episodes import TrainEpisodes
from maskforge.eval.seeds import derive_seed, rng_for
from maskforge.models.device import torch_threads
from maskforge.models.diffews import codec
from maskforge.models.diffews.checkpoint import save_diffews
from maskforge.models.diffews.network import DiffewsNet
from maskforge.models.diffews.segmenter import autocast
from maskforge.models.train_state import TrainState, clear_resume_states
from maskforge.storage.fs import atomic_write_bytes, exists, join, read_bytes
from maskforge.storage.labels import IGNORE
from maskforge.storage.marked_folder import COMPLETE
from maskforge.tasks.diffews.config import CHECKPOINT_DIR, DiffewsConfig
from maskforge.tasks.diffews.model import autocast_dtype, device_of, embedding_sha, new_network
from maskforge.tasks.diffews.preflight import check_train_inputs
from maskforge.tasks.progress import eta

TRAIN_LOG_NAME = "train.json"


def linear_decay(steps: int) -> Callable[[int], float]:
    """Return the LR factor of a linear decay from 1 to 0 over `steps` (polynomial schedule, power 1, no warm-up)."""
    return lambda step: max(0.0, 1.0 - step / steps)


def episode_tensors(
    net: DiffewsNet, images: EpisodeImages, batch, size: int, device, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Return (query latents, query mask latents, support latents, support mask latents) of a batch of episodes
    with the same shot count, supports episode-major; latents are posterior samples (training)."""
    queries, query_masks, supports, support_masks = [], [], [], []
    for ep in batch:
        image, label = images.get(ep.query_id)
        queries.append(image)
        query_masks.append((label == ep.class_id) & (label != IGNORE))
        for sid in ep.support_ids:
            image, label = images.get(sid)
            supports.append(image)
            support_masks.append(label == ep.class_id)
    with torch.no_grad():
        return tuple(
            codec.encode(net.vae, pixels, sample=True, generator=generator)
            for pixels in (
                codec.images_to_tensor(queries, size, device),
                codec.masks_to_rgb(query_masks, size, device),
                codec.images_to_tensor(supports, size, device),
                codec.masks_to_rgb(support_masks, size, device),
            )
        )


def train_diffews(config: DiffewsConfig, log: Callable[[str], None] = print) -> dict:
    """Fine-tune SD's UNet (+ conv_in_ref) into DiffewS on episodes of the fold's base classes; write the checkpoint
    folder, config and log. Each batch draws n in [1, max_shots] and batch_size episodes of n supports;
    grad_accumulation batches make an optimiser step.

    Returns {"train_dir", "checkpoint", "losses" (mean per log window), "steps", "seconds", "text_embedding_sha256",
    "complete"}. A folder whose checkpoint is complete is reported, not retrained (its name hashes what defines it).
    """
    with torch_threads(config.run.threads):
        return _train(config, log)


def _train(config: DiffewsConfig, log: Callable[[str], None]) -> dict:
    """The body of train_diffews."""
    out = config.train_dir()
    ckpt = join(out, CHECKPOINT_DIR)
    device = device_of(config)
    dtype = autocast_dtype(config, device)  # before the reuse check: a config the device cannot run is an error
    if exists(join(ckpt, COMPLETE)):
        log(f"already trained: {ckpt}")
        return {**json.loads(read_bytes(join(out, TRAIN_LOG_NAME))), "complete": True}
    inputs = check_train_inputs(config)  # before the network is built: a wrong input fails in seconds
    t, size = config.train, config.model.img_size
    dataset, fold, runs, synthetic = inputs.dataset, inputs.fold, inputs.runs, inputs.synthetic
    index = dataset.class_index(t.split)
    # synthetic samples join the pools as queries and supports alike
    pools = {c: sorted(index.get(c, [])) + synthetic[c] for c in fold.base}
    what = f"{dataset.name} fold {fold.index} split {t.split} (DiffewS training)"
    episodes = TrainEpisodes(pools, fold.base, t.seed, what, max_shots=t.max_shots)
    images = EpisodeImages(dataset, runs)
    torch.manual_seed(derive_seed("diffews-init", t.seed))
    net = new_network(config).to(device)
    if config.run.gradient_checkpointing:
        net.enable_gradient_checkpointing()
    params = [p for p in net.unet.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=t.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=t.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, linear_decay(t.steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    generator = torch.Generator(device).manual_seed(derive_seed("diffews-vae-samples", t.seed))
    shots_rng = rng_for("diffews-train-shots", t.seed)
    net.train()
    state = TrainState(
        out,
        "diffews",
        t.steps,
        {"net": net, "optimiser": optimiser, "schedule": schedule, "scaler": scaler},
        {"episodes": episodes.rng, "shots": shots_rng, "vae_samples": generator},
        config.run.save_every_s,
    )
    done, kept = state.restore()
    losses, window, synthetic_draws = kept.get("losses", []), kept.get("window", []), kept.get("synthetic_draws", 0)
    shot_counts = np.array(kept.get("shot_counts", [0] * t.max_shots), int)
    start = time.perf_counter() - kept.get("seconds", 0.0)
    log(
        f"training DiffewS on {dataset.name} fold {fold.index}: {sum(p.numel() for p in params)} parameters"
        + (f"; resumed at step {done}/{t.steps} from {state.url}" if done else "")
    )
    for step in range(done + 1, t.steps + 1):
        optimiser.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(t.grad_accumulation):
            shots = int(shots_rng.integers(1, t.max_shots + 1))
            shot_counts[shots - 1] += 1
            batch = [episodes.next(shots) for _ in range(t.batch_size)]
            synthetic_draws += sum(i.startswith("syn:") for ep in batch for i in (ep.query_id, *ep.support_ids))
            z_query, z_mask, z_support, z_support_mask = episode_tensors(net, images, batch, size, device, generator)
            with autocast(device, dtype):
                predicted = net(z_query, z_support, z_support_mask)
            # OI2M: the UNet's output is trained towards -z_mask, i.e. the negated output (predicted) towards z_mask
            loss = F.mse_loss(predicted.float(), z_mask.float())
            scaler.scale(loss / t.grad_accumulation).backward()
            step_loss += float(loss.detach()) / t.grad_accumulation
        scaler.unscale_(optimiser)
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        scaler.step(optimiser)
        scaler.update()
        schedule.step()
        window.append(step_loss)
        if step % t.log_every == 0 or step == t.steps:
            losses.append(sum(window) / len(window))
            elapsed = time.perf_counter() - start
            log(f"step {step}/{t.steps}: loss {losses[-1]:.4f} ({elapsed:.1f} s, {eta(step, t.steps, elapsed)})")
            window = []
        kept = {"losses": losses, "window": window, "synthetic_draws": synthetic_draws}
        state.maybe_save(step, {**kept, "shot_counts": shot_counts.tolist(), "seconds": time.perf_counter() - start})
    report = {
        "train_dir": out,
        "checkpoint": ckpt,
        "losses": losses,
        "steps": t.steps,
        "seconds": round(time.perf_counter() - start, 2),
        "parameters": sum(p.numel() for p in params),
        "shot_counts": shot_counts.tolist(),
        "synthetic_draws": synthetic_draws,
        "text_embedding_sha256": embedding_sha(net.text_embedding),
    }
    atomic_write_bytes(join(out, "config.yaml"), yaml.safe_dump(config.resolved(), sort_keys=False).encode())
    atomic_write_bytes(join(out, TRAIN_LOG_NAME), json.dumps(report, indent=2).encode())
    # the checkpoint folder is written last, its COMPLETE marker last of all: it marks the run complete
    save_diffews(ckpt, net.unet.cpu(), net.text_embedding, {"config": config.resolved(), "train": report})
    clear_resume_states(out)
    return {**report, "complete": True}
