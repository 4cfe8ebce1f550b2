"""Normalized masked textual inversion (AlignDiff §3.4, Eq. 3): learn one instance embedding v* for a shot."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maskforge.models.controls import fit_size, resize_image, resize_mask
from maskforge.models.diffusion_config import EmbeddingModeConfig
from maskforge.storage.embeddings import read_embedding


@dataclass
class LearnedEmbedding:
    """The outcome of one inversion: the vector, the loss per step and the time it took."""

    vector: torch.Tensor  # (D,) float32 on the CPU
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def latent_mask(mask: np.ndarray, latent_hw: tuple[int, int], rule: str, cut: float) -> torch.Tensor:
    """Bring a bool (H, W) mask to the latent grid as float {0, 1}.

    "area": the foreground fraction of each latent cell (area downsampling) > cut; "nearest": the mask value at
    each cell's nearest pixel.
    """
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    if rule == "area":
        return (F.interpolate(m, size=latent_hw, mode="area")[0, 0] > cut).float()
    if rule == "nearest":
        return F.interpolate(m, size=latent_hw, mode="nearest")[0, 0]
    raise ValueError(f"diffusion.embedding.mask_rule: unknown rule {rule!r}; expected 'area' or 'nearest'")


def masked_noise_loss(pred: torch.Tensor, target: torch.Tensor, fg: torch.Tensor, bg_lambda: float) -> torch.Tensor:
    """Eq. 3 per sample: mean squared error over foreground latent pixels + bg_lambda x the mean over background.

    pred, target: (B, C, h, w); fg: (B, h, w) in {0, 1}, each sample its own mask. Each region's sum is divided by
    its own pixel count (times C). A region with no pixel contributes 0 (its mean is undefined, not NaN): an empty
    foreground leaves the background term alone, an empty background the foreground term alone. Returns (B,).
    """
    if pred.shape != target.shape or pred.ndim != 4 or fg.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(f"shapes: pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(fg.shape)}")
    err = (pred.float() - target.float()).pow(2).sum(1)  # (B, h, w), summed over channels
    fg = fg.float()
    bg = 1.0 - fg
    channels = pred.shape[1]
    fg_term = (err * fg).sum((1, 2)) / (fg.sum((1, 2)) * channels).clamp(min=1.0)
    bg_term = (err * bg).sum((1, 2)) / (bg.sum((1, 2)) * channels).clamp(min=1.0)
    return fg_term + bg_lambda * bg_term


def token_position(tokenizer, template: str, word: str, initializer: str) -> tuple[list[int], int]:
    """Return (padded input ids of the prompt with the initializer at {token}, the position of {token}).

    v* goes right after the determiner ("a photo of a v* red disc"); the noun stays.
    """
    init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
    if len(init_ids) != 1:
        raise ValueError(f"diffusion.embedding.initializer {initializer!r} must be one token, got {len(init_ids)}")
    prefix = template.split("{token}")[0].format(**{"class": word}).rstrip()
    position = 1 + len(tokenizer(prefix, add_special_tokens=False).input_ids) if prefix else 1
    prompt = template.format(**{"token": initializer, "class": word})
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    if ids[position] != init_ids[0]:
        raise ValueError(f"template {template!r}: the {{token}} slot did not land at token {position} of {prompt!r}")
    return ids, position


@dataclass
class Draw:
    """One optimisation step's random draws: latent view per sample, latent sample noise, added noise, timesteps."""

    view: torch.Tensor  # (B,) int64
    eps: torch.Tensor  # (B, 4, h, w) float32
    noise: torch.Tensor  # (B, 4, h, w) float32
    t: torch.Tensor  # (B,) int64

    def parts(self) -> tuple[torch.Tensor, ...]:
        """Return (view, eps, noise, t)."""
        return self.view, self.eps, self.noise, self.t

    def to(self, device: torch.device, non_blocking: bool = False) -> Draw:
        """Return the draws on `device`."""
        return Draw(*(x.to(device, non_blocking=non_blocking) for x in self.parts()))


class Draws:
    """Each step's draws from one CPU generator, made `chunk` steps at a time on a GPU.

    The values are those of drawing step by step (same generator, same order), so CPU and GPU runs see the same
    noise; on a GPU one pinned, non-blocking copy per chunk replaces four blocking copies per step.
    """

    def __init__(self, problem: InversionProblem, generator: torch.Generator, batch: int, chunk: int | None = None):
        self.problem, self.generator, self.batch = problem, generator, batch
        self.cuda = problem.device.type == "cuda"
        self.chunk = chunk or (50 if self.cuda else 1)
        self.ready: list[Draw] = []

    def next(self) -> Draw:
        """Return the next step's draws on the problem's device."""
        if self.chunk == 1:
            return self.problem.draw(self.generator, self.batch).to(self.problem.device)
        if not self.ready:
            draws = [self.problem.draw(self.generator, self.batch) for _ in range(self.chunk)]
            stacked = [torch.stack(parts) for parts in zip(*(d.parts() for d in draws))]
            if self.cuda:  # pinned host memory: the copy runs without stopping the host
                stacked = [x.pin_memory() for x in stacked]
            on_device = Draw(*stacked).to(self.problem.device, non_blocking=self.cuda)
            self.ready = [Draw(*(x[i] for x in on_device.parts())) for i in range(self.chunk)]
        return self.ready.pop(0)


def _pixels(image: np.ndarray, device, dtype) -> torch.Tensor:
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0)[None].to(device=device, dtype=dtype)


def encode_shot(vae, image: np.ndarray, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE-encode a shot (and its mirror image) once; return the latent distributions' (mean, std), (V, 4, h, w).

    Sampling mean + std * noise each step then equals re-encoding every step (the encoder is deterministic).
    """
    views = [image, image[:, ::-1].copy()] if flip else [image]
    batch = torch.cat([_pixels(v, vae.device, vae.dtype) for v in views])
    with torch.no_grad():
        dist = vae.encode(batch).latent_dist
    return dist.mean.float(), dist.std.float()


class InversionProblem:
    """One shot's Eq. 3 objective on a frozen pipeline: cached latents, per-view latent masks, the prompt with v*.

    The text encoder's embedding matrix is never written: a forward hook on its token-embedding layer puts v* at
    the {token} position, so every other row stays byte-identical and UNet, VAE and text encoder stay frozen.
    """

    def __init__(self, pipe, image: np.ndarray, mask: np.ndarray, word: str, cfg: EmbeddingModeConfig):
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} differs from the image's {image.shape[:2]}")
        self.pipe, self.image, self.cfg = pipe, image, cfg
        for frozen in (pipe.unet, pipe.vae, pipe.text_encoder):
            frozen.requires_grad_(False)  # gradients flow through them to v*, but none is kept for their weights
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        ids, self.position = token_position(pipe.tokenizer, cfg.template, word, cfg.initializer)
        self.initial = pipe.text_encoder.get_input_embeddings().weight[ids[self.position]].detach().float().clone()
        self.views = 2 if cfg.flip else 1
        self.mean, self.std = encode_shot(pipe.vae, image, cfg.flip)
        hw = tuple(self.mean.shape[-2:])
        views = [mask, mask[:, ::-1]] if cfg.flip else [mask]
        self.masks = torch.stack([latent_mask(m, hw, cfg.mask_rule, cfg.mask_cut) for m in views]).to(self.device)
        self.input_ids = torch.tensor([ids], device=self.device)

    def draw(self, generator: torch.Generator, batch: int) -> Draw:
        """Return one step's random draws from the CPU generator, in the order the loss has always consumed them."""
        view = torch.randint(0, self.views, (batch,), generator=generator)
        eps = torch.randn((batch, *self.mean.shape[1:]), generator=generator)
        noise = torch.randn(eps.shape, generator=generator)
        t = torch.randint(0, self.pipe.scheduler.config.num_train_timesteps, (batch,), generator=generator)
        return Draw(view, eps, noise, t)

    def loss(self, v: torch.Tensor, source: torch.Generator | Draw, batch: int, reencode: bool = False) -> torch.Tensor:
        """Return the mean Eq. 3 loss of v* over `batch` random (view, latent sample, noise, timestep) draws.

        `source` is the CPU generator to draw from, or a Draw already made (and moved to the device) by Draws.
        """
        pipe, scheduler = self.pipe, self.pipe.scheduler
        draw = source if isinstance(source, Draw) else self.draw(source, batch).to(self.device)
        view = draw.view
        mean, std = encode_shot(pipe.vae, self.image, self.cfg.flip) if reencode else (self.mean, self.std)
        latents = (mean[view] + std[view] * draw.eps) * pipe.vae.config.scaling_factor
        noisy = scheduler.add_noise(latents, draw.noise, draw.t)
        target = (
            scheduler.get_velocity(latents, draw.noise, draw.t)
            if scheduler.config.prediction_type == "v_prediction"
            else draw.noise
        )

        def put_v(module, args, output):
            output = output.clone()
            output[:, self.position] = v.to(output.dtype)
            return output

        handle = pipe.text_encoder.get_input_embeddings().register_forward_hook(put_v)
        use_amp = self.device.type == "cuda" and self.dtype != torch.float32
        try:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=use_amp):
                states = pipe.text_encoder(self.input_ids.expand(batch, -1))[0]
                pred = pipe.unet(noisy.to(self.dtype), draw.t, states.to(self.dtype)).sample
        finally:
            handle.remove()
        return masked_noise_loss(pred, target, self.masks[view], self.cfg.bg_lambda).mean()

    @torch.no_grad()
    def evaluate(self, v: torch.Tensor, seed: int, draws: int = 32, batch: int = 8) -> float:
        """Return the loss of v* on a fixed set of draws (same seed, same draws): comparable across vectors."""
        generator = torch.Generator("cpu").manual_seed(seed)
        return float(
            sum(self.loss(v, generator, batch) * batch for _ in range(draws // batch)) / (draws // batch * batch)
        )


def learn_embedding(
    pipe,
    image: np.ndarray,
    mask: np.ndarray,
    word: str,
    cfg: EmbeddingModeConfig,
    seed: int,
    reencode_every_step: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    log_every: int = 50,
) -> LearnedEmbedding:
    """Learn v* for one shot (image, bool mask) already at training size with AdamW; only v* receives gradients.

    `reencode_every_step` re-runs the VAE each step instead of using the cached latents (for the benchmark);
    `on_step(step, loss)` is called every `log_every` steps and after the last (progress reporting). Losses stay on
    the device between those calls, so a GPU step never waits for the host; early stopping reads each step's loss
    and so syncs every step.
    """
    start = time.perf_counter()
    problem = InversionProblem(pipe, image, mask, word, cfg)
    v = problem.initial.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [v], lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True if v.is_cuda else None
    )
    draws = Draws(problem, torch.Generator("cpu").manual_seed(seed), cfg.batch_size)
    losses = torch.zeros(cfg.steps, device=v.device)
    best, since_best, smoothed = float("inf"), 0, None
    done = reported = 0
    while done < cfg.steps:
        loss = problem.loss(v, draws.next(), cfg.batch_size, reencode_every_step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[done] = loss.detach()
        done += 1
        stop = False
        if cfg.early_stop_patience:  # plateau of an exponential moving average of the loss
            value = float(losses[done - 1])
            smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
            if smoothed < best * 0.999:
                best, since_best = smoothed, 0
            else:
                since_best += 1
                stop = since_best >= cfg.early_stop_patience
        if on_step is not None and (done - reported >= log_every or done == cfg.steps or stop):
            on_step(done, float(losses[done - 1]))
            reported = done
        if stop:
            break
    return LearnedEmbedding(v.detach().float().cpu(), losses[:done].tolist(), time.perf_counter() - start)


def shot_for_training(
    image: np.ndarray, mask: np.ndarray, short_side: int, multiple: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a shot and its mask to the training size (short side, aspect kept, sides a multiple of the model's)."""
    size = fit_size(*mask.shape, short_side, multiple)
    return resize_image(image, size), resize_mask(mask, size)


def load_embeddings(pipe, files: dict[str, Path]) -> None:
    """Load bank files into a pipeline under the given tokens, then check each token resolves to its vector."""
    for token, path in files.items():
        vector, _ = read_embedding(path)
        pipe.load_textual_inversion(str(path), token=token)
        ids = pipe.tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"{path}: token {token!r} encodes to {len(ids)} tokens after loading, expected 1")
        row = pipe.text_encoder.get_input_embeddings().weight[ids[0]].detach().float().cpu()
        if not torch.allclose(row, vector.float(), rtol=1e-3, atol=1e-3):
            raise ValueError(f"{path}: token {token!r} does not resolve to the learned vector after loading")


def unload_embeddings(pipe, tokens: list[str]) -> None:
    """Remove tokens loaded by load_embeddings from the pipeline's tokenizer and text encoder."""
    if tokens:
        pipe.unload_textual_inversion(tokens)
