"""Train the tiny toy generative models: VAE, text-to-image UNet with its text encoder, and ControlNets."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from maskforge.eval.datasets.toy import render_object
from maskforge.eval.folds import TOY_CLASSES, get_fold
from maskforge.eval.seeds import derive_seed
from maskforge.models.controls import control_image
from maskforge.models.device import resolve_device
from maskforge.models.grounding import grounding
from maskforge.models.tiny import SD_DIR, controlnet_dir, edge_hed, tiny_controlnet, tiny_sd_components
from maskforge.models.toy_train_config import ControlNetTrain, DiffusionTrain, ToyTrainConfig, VaeTrain
from maskforge.models.xattn_mask import token_weights, word_token_indices

Log = Callable[[str], None]
#: Written next to the trained models: config, seconds, final losses of each training command.
RECORD_FILE = "training.json"


@dataclass
class ObjectSet:
    """Object-centric training images of the fold's base classes: uint8 images, bool masks, class ids."""

    images: np.ndarray
    masks: np.ndarray
    class_ids: np.ndarray

    def tensor(self) -> torch.Tensor:
        """Return the images as (N, 3, H, W) float in [-1, 1]."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def object_set(
    cfg: ToyTrainConfig, radius: tuple[float, float] = (0.22, 0.38), centre: tuple[float, float] = (0.38, 0.62)
) -> ObjectSet:
    """Render images_per_class object photos of every base class of the fold (deterministic in world_seed)."""
    base = get_fold("toy", cfg.fold).base
    images, masks, ids = [], [], []
    for cid in base:
        for i in range(cfg.images_per_class):
            image, mask = render_object(cfg.world_seed, cid, i, cfg.image_size, radius, centre)
            images.append(image), masks.append(mask), ids.append(cid)
    return ObjectSet(np.stack(images), np.stack(masks), np.asarray(ids))


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right (the toy classes are mirror-symmetric)."""
    flip = torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_vae(vae, images: torch.Tensor, cfg: VaeTrain, gen: torch.Generator, log: Log, log_every: int) -> dict:
    """Train the autoencoder in place; set its scaling_factor to 1 / std of the latents; return final losses."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    vae.train()
    recent: list[float] = []
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen, device=gen.device)
        x = _flip(images[idx], gen)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen, device=gen.device)
        rec = vae.decode(z).sample
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        loss = rec_loss + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(), sched.step()
        recent = (recent + [rec_loss.item()])[-100:]
        if step % log_every == 0 or step == cfg.steps:
            log(f"vae step {step}/{cfg.steps}: reconstruction loss {np.mean(recent):.4f}")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    return {"reconstruction_loss": round(float(np.mean(recent)), 5), "scaling_factor": round(scale, 5)}


def _latent_stats(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every image once: latent means and stds (sampled per step, as with a cached posterior)."""
    with torch.no_grad():
        dists = [vae.encode(chunk).latent_dist for chunk in images.split(256)]
    return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


def _caption_ids(tokenizer, template: str, class_ids: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of each image's caption (N, 77) and of the empty caption (1, 77)."""
    names = {int(c): TOY_CLASSES[int(c) - 1] for c in np.unique(class_ids)}
    per_class = {
        c: tokenizer(
            template.format(**{"class": n}),
            padding="max_length",
            truncation=True,
            max_length=tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids[0]
        for c, n in names.items()
    }
    ids = torch.stack([per_class[int(c)] for c in class_ids]).to(device)
    empty = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return ids, empty.to(device)


def _snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction: min(SNR, gamma) / SNR."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    return torch.clamp(snr, max=gamma) / snr


class _Batches:
    """Draws training batches: noisy latents, timesteps, noise and (dropped-out) caption ids."""

    def __init__(self, means, stds, ids, empty, scale, scheduler, dropout, gen) -> None:
        self.means, self.stds, self.ids, self.empty = means, stds, ids, empty
        self.scale, self.scheduler, self.dropout, self.gen = scale, scheduler, dropout, gen

    def draw(self, batch_size: int, extra: torch.Tensor | None = None):
        """Return (idx, noisy, t, noise, caption ids) for one batch."""
        g, dev = self.gen, self.gen.device
        idx = torch.randint(len(self.means), (batch_size,), generator=g, device=dev)
        z = self.means[idx] + self.stds[idx] * torch.randn(self.means[idx].shape, generator=g, device=dev)
        z = z * self.scale
        noise = torch.randn(z.shape, generator=g, device=dev)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch_size,), generator=g, device=dev)
        noisy = self.scheduler.add_noise(z, noise, t)
        drop = torch.rand(batch_size, generator=g, device=dev) < self.dropout
        ids = torch.where(drop[:, None], self.empty.expand(batch_size, -1), self.ids[idx])
        return idx, noisy, t, noise, ids


def _word_weights(tokenizer, template: str, class_ids: np.ndarray, device) -> torch.Tensor:
    """Token weights (N, 77) of each caption's class word (1/len over its tokens), as the xattn capture uses them."""
    rows = {
        int(c): token_weights(
            [
                word_token_indices(
                    tokenizer, template.format(**{"class": TOY_CLASSES[int(c) - 1]}), TOY_CLASSES[int(c) - 1]
                )
            ],
            tokenizer.model_max_length,
        )[0]
        for c in np.unique(class_ids)
    }
    return torch.stack([rows[int(c)] for c in class_ids]).to(device)


def train_text_to_image(
    components: dict,
    latents,
    class_ids,
    cfg: DiffusionTrain,
    gen,
    log: Log,
    log_every: int,
    masks: torch.Tensor | None = None,
) -> dict:
    """Train UNet and text encoder together on (latent, caption) pairs; load the EMA weights; return final losses.

    With cfg.grounding_weight > 0, `masks` (N, h, w) on the latent grid feed the grounding loss of the class word's
    cross-attention maps (captioned images only).
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    noise_sched = DDPMScheduler.from_config(components["scheduler"].config)
    ids, empty = _caption_ids(tokenizer, cfg.template, class_ids, gen.device)
    means, stds = latents
    batches = _Batches(
        means, stds, ids, empty, components["vae"].config.scaling_factor, noise_sched, cfg.prompt_dropout, gen
    )
    grounded = cfg.grounding_weight > 0
    if grounded and masks is None:
        raise ValueError("diffusion.grounding_weight > 0 needs the object masks; none were given")
    words = _word_weights(tokenizer, cfg.template, class_ids, gen.device) if grounded else None
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    unet.train(), text_encoder.train()
    recent: list[float] = []
    recent_ground: list[float] = []
    with grounding(unet, cfg.grounding_factors) if grounded else nullcontext() as state:
        for step in range(1, cfg.steps + 1):
            idx, noisy, t, noise, caption = batches.draw(cfg.batch_size)
            captioned = (caption != empty).any(dim=1)
            if grounded:
                state.weights = words[idx] * captioned[:, None]
            states = text_encoder(caption)[0]
            pred = unet(noisy, t, states).sample
            per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
            loss = (per * _snr_weights(noise_sched, t, cfg.snr_gamma)).mean()
            if grounded:
                ground = (state.loss(masks[idx]) * captioned).sum() / captioned.sum().clamp_min(1)
                loss = loss + cfg.grounding_weight * ground
                recent_ground = (recent_ground + [ground.item()])[-200:]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(), sched.step()
            ema.step(params)
            recent = (recent + [per.mean().item()])[-200:]
            if step % log_every == 0 or step == cfg.steps:
                extra = f", grounding {np.mean(recent_ground):.4f}" if grounded else ""
                log(f"diffusion step {step}/{cfg.steps}: noise mse {np.mean(recent):.4f}{extra}")
    ema.copy_to(params)
    unet.eval(), text_encoder.eval()
    out = {"noise_mse": round(float(np.mean(recent)), 5)}
    if grounded:
        out["grounding_mse"] = round(float(np.mean(recent_ground)), 5)
    return out


def control_images(kind: str, objects: ObjectSet, cfg: ControlNetTrain) -> np.ndarray:
    """Return the condition image of every training object, made as the diffusion stage makes it from a shot."""
    from controlnet_aux import HEDdetector

    hed = HEDdetector(edge_hed()) if kind in ("hed", "scribble") else None
    return np.stack(
        [
            control_image(kind, img, m, hed, cfg.mask_color, cfg.hed_dilation, f"toy object {i}")
            for i, (img, m) in enumerate(zip(objects.images, objects.masks))
        ]
    )


def train_controlnet(
    components: dict,
    latents,
    class_ids,
    conds: torch.Tensor,
    cfg: ControlNetTrain,
    template: str,
    gen,
    log: Log,
    log_every: int,
    seed: int,
):
    """Train a ControlNet (initialised from the frozen UNet) on (latent, condition, caption); return it and losses."""
    from diffusers import DDPMScheduler

    unet, text_encoder = components["unet"], components["text_encoder"]
    net = tiny_controlnet(unet, seed, zero_out=True).to(gen.device)
    noise_sched = DDPMScheduler.from_config(components["scheduler"].config)
    ids, empty = _caption_ids(components["tokenizer"], template, class_ids, gen.device)
    batches = _Batches(
        *latents, ids, empty, components["vae"].config.scaling_factor, noise_sched, cfg.prompt_dropout, gen
    )
    unet.requires_grad_(False), text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    net.train()
    recent: list[float] = []
    for step in range(1, cfg.steps + 1):
        idx, noisy, t, noise, caption = batches.draw(cfg.batch_size)
        with torch.no_grad():
            states = text_encoder(caption)[0]
        down, mid = net(noisy, t, encoder_hidden_states=states, controlnet_cond=conds[idx], return_dict=False)
        pred = unet(noisy, t, states, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step(), sched.step()
        recent = (recent + [loss.item()])[-200:]
        if step % log_every == 0 or step == cfg.steps:
            log(f"controlnet step {step}/{cfg.steps}: noise mse {np.mean(recent):.4f}")
    net.eval()
    return net, {"noise_mse": round(float(np.mean(recent)), 5)}


def _save_atomic(save: Callable[[Path], None], dest: Path) -> None:
    """Write a model folder under a temporary name, then rename it over dest (never a half-written folder)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _record(out: Path, name: str, entry: dict) -> None:
    """Add one training command's record to out/training.json (atomically)."""
    path = out / RECORD_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = entry
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.rename(path)


def _timed(log: Log) -> Log:
    """Prefix each log line with the seconds since training started."""
    start = time.perf_counter()
    return lambda msg: log(f"[{time.perf_counter() - start:7.1f} s] {msg}")


def _setup(cfg: ToyTrainConfig) -> torch.device:
    """Set torch's CPU threads and return the training device."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device, "device (toy training config)")


def _generator(cfg: ToyTrainConfig, device: torch.device, stage: str) -> torch.Generator:
    """Return the generator of one training stage, seeded from (seed, stage)."""
    return torch.Generator(device).manual_seed(derive_seed("toy-train", stage, cfg.seed) % 2**62)


def train_diffusion(cfg: ToyTrainConfig, out: str | Path, log: Log = print) -> dict:
    """Train the tiny text-to-image model (VAE, then UNet + text encoder) and write out/sd in diffusers format."""
    from diffusers import StableDiffusionPipeline

    out, log = Path(out), _timed(log)
    start = time.perf_counter()
    device = _setup(cfg)
    gen = _generator(cfg, device, "diffusion")
    objects = object_set(cfg)
    log(f"rendered {len(objects.images)} object images of base classes {sorted(set(objects.class_ids.tolist()))}")
    components = tiny_sd_components(cfg.seed)
    for name in ("unet", "vae", "text_encoder"):
        components[name].to(device)
    images = objects.tensor().to(device)
    vae_losses = train_vae(components["vae"], images, cfg.vae, gen, log, cfg.log_every)
    latents = _latent_stats(components["vae"], images)
    t2i_losses = train_text_to_image(
        components,
        latents,
        objects.class_ids,
        cfg.diffusion,
        gen,
        log,
        cfg.log_every,
        _latent_masks(objects, latents[0].shape[-2:], device),
    )
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False).to("cpu")
    out.mkdir(parents=True, exist_ok=True)
    _save_atomic(lambda p: pipe.save_pretrained(p, safe_serialization=True), out / SD_DIR)
    entry = {
        "config": cfg.resolved(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
        "vae": vae_losses,
        "diffusion": t2i_losses,
    }
    _record(out, "train-diffusion", entry)
    return entry


def _latent_masks(objects: ObjectSet, grid: tuple[int, int], device) -> torch.Tensor:
    """Return the object masks area-averaged to the latent grid: (N, h, w) float in [0, 1]."""
    masks = torch.from_numpy(objects.masks).float()[:, None]
    return F.adaptive_avg_pool2d(masks, tuple(grid))[:, 0].to(device)


def ground_diffusion(cfg: ToyTrainConfig, out: str | Path, log: Log = print) -> dict:
    """Fine-tune the trained out/sd (UNet + text encoder) with the grounding loss on (cfg.ground); rewrite out/sd."""
    from diffusers import StableDiffusionPipeline

    out, log = Path(out), _timed(log)
    start = time.perf_counter()
    device = _setup(cfg)
    gen = _generator(cfg, device, "ground")
    components = load_trained_components(out / SD_DIR, device)
    objects = object_set(cfg)
    latents = _latent_stats(components["vae"], objects.tensor().to(device))
    losses = train_text_to_image(
        components,
        latents,
        objects.class_ids,
        cfg.ground,
        gen,
        log,
        cfg.log_every,
        _latent_masks(objects, latents[0].shape[-2:], device),
    )
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False).to("cpu")
    _save_atomic(lambda p: pipe.save_pretrained(p, safe_serialization=True), out / SD_DIR)
    entry = {
        "config": cfg.resolved(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
        "diffusion": losses,
    }
    _record(out, "ground-diffusion", entry)
    return entry


def load_trained_components(folder: Path, device: torch.device) -> dict:
    """Load a trained toy SD folder's components in float32 on device (for ControlNet training)."""
    from diffusers import StableDiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: no trained toy SD here; run `maskforge toy train-diffusion` first")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False
    ).to(device)
    return {
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "scheduler": pipe.scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def train_controlnets(cfg: ToyTrainConfig, out: str | Path, kinds: list[str] | None = None, log: Log = print) -> dict:
    """Train one ControlNet per condition kind on the trained toy SD in out/sd; write out/controlnet-KIND."""
    out, log = Path(out), _timed(log)
    entries = {}
    # the frozen SD, the training objects and their latents are the same for every kind: load and encode once
    device = _setup(cfg)
    components = load_trained_components(out / SD_DIR, device)
    objects = object_set(cfg, cfg.controlnet.object_radius, cfg.controlnet.object_centre)
    latents = _latent_stats(components["vae"], objects.tensor().to(device))
    for kind in kinds or cfg.controlnet.kinds:
        start = time.perf_counter()
        gen = _generator(cfg, device, f"controlnet-{kind}")
        conds = torch.from_numpy(control_images(kind, objects, cfg.controlnet)).permute(0, 3, 1, 2).float() / 255.0
        net, losses = train_controlnet(
            components,
            latents,
            objects.class_ids,
            conds.to(device),
            cfg.controlnet,
            cfg.diffusion.template,
            gen,
            log,
            cfg.log_every,
            cfg.seed + 10,
        )
        net.to("cpu")
        _save_atomic(lambda p: net.save_pretrained(p, safe_serialization=True), out / controlnet_dir(kind))
        entries[kind] = {
            "config": cfg.resolved(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - start, 1),
            "controlnet": losses,
        }
        _record(out, f"train-controlnet-{kind}", entries[kind])
    return entries
