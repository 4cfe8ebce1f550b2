"""Diffusion stage for one novel class: text and ControlNet images with cross-attention coarse masks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.metrics import iou
from maskforge.eval.seeds import item_seed
from maskforge.models.controls import control_image, fit_size, resize_image, resize_mask
from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.loading import Pipelines, size_multiple
from maskforge.models.textual_inversion import load_embeddings, unload_embeddings
from maskforge.models.xattn import CaptureBatch, capture_cross_attention
from maskforge.models.xattn_mask import coarse_mask, soft_map, token_weights, word_token_indices
from maskforge.storage.codec import ShardSample
from maskforge.storage.labels import LABEL_DTYPE, binary_mask
from maskforge.tasks.class_samples import sample_key
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.fold_plan import ClassPlan, FoldPlan
from maskforge.tasks.progress import Progress
from maskforge.tasks.prompts import class_word, embedding_token
from maskforge.tasks.textual_inversion import shot_embedding


@dataclass(frozen=True)
class GenItem:
    """One image to generate: its source (mode), index within the class, seed, prompts and condition."""

    source: str  # "text", "embedding", "cn-mask", "cn-hed" or "cn-scribble"
    index: int
    seed: int
    prompt: str
    negative_prompt: str
    guidance_scale: float
    control: str | None = None  # the ControlNet condition kind
    shot_id: str | None = None  # the real shot a ControlNet image is conditioned on


@dataclass
class Generated:
    """A generated image with its cross-attention soft map and coarse mask (and the control it used)."""

    item: GenItem
    image: np.ndarray  # (H, W, 3) uint8
    soft: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool, soft > cut
    cut: float
    token_indices: list[int]
    control: np.ndarray | None = None  # (H, W, 3) uint8 condition
    support: np.ndarray | None = None  # (H, W) bool support mask at generation size


def plan_items(
    cfg: DiffusionConfig, run_seed: int, class_id: int, word: str, shot_ids: tuple[str, ...]
) -> list[GenItem]:
    """Return the class's work items: text prompts, embedding prompts (shots in turn), then per shot and
    condition `per_shot` ControlNet images.

    Each seed derives from (run seed, class, index, source), so any item can be regenerated on its own.
    """
    items = [
        GenItem(
            "text",
            i,
            item_seed(run_seed, class_id, i, "diffusion-text"),
            cfg.text.template.format(**{"class": word}),
            cfg.text.negative_prompt,
            cfg.text.guidance_scale,
        )
        for i in range(cfg.text.samples)
    ]
    for i in range(cfg.embedding.samples):
        k = i % len(shot_ids)
        prompt = cfg.embedding.template.format(**{"token": embedding_token(k), "class": word})
        items.append(
            GenItem(
                "embedding",
                i,
                item_seed(run_seed, class_id, i, "diffusion-embedding"),
                prompt,
                cfg.text.negative_prompt,
                cfg.text.guidance_scale,
                None,
                shot_ids[k],
            )
        )
    cn = cfg.controlnet
    for kind in cn.conditions:
        source = f"cn-{kind}"
        for s, shot in enumerate(shot_ids):
            for k in range(cn.per_shot):
                index = s * cn.per_shot + k
                items.append(
                    GenItem(
                        source,
                        index,
                        item_seed(run_seed, class_id, index, f"diffusion-{source}"),
                        cn.prompt.format(**{"class": word}),
                        cn.negative_prompt,
                        cn.guidance_scale,
                        kind,
                        shot,
                    )
                )
    return items


def selected_steps(steps: int, step_range: tuple[float, float]) -> frozenset[int]:
    """Return the denoising step indices i with start <= i / steps < end; none selected is an error."""
    start, end = step_range
    chosen = frozenset(i for i in range(steps) if start <= i / steps < end)
    if not chosen:
        raise ValueError(f"diffusion.xattn.step_range {list(step_range)} selects none of the {steps} steps")
    return chosen


def generate_batch(
    pipe,
    items: list[GenItem],
    word: str,
    cfg: DiffusionConfig,
    size: tuple[int, int],
    controls: list[np.ndarray] | None = None,
    capture: bool = True,
) -> tuple[np.ndarray, dict[int, torch.Tensor] | None, list[list[int]]]:
    """Run one pipeline call on items sharing a mode; return (uint8 images, per-factor maps or None, token indices).

    One CPU generator per item seeds its latents, so an image does not depend on the batch it ran in.
    """
    height, width = size
    multiple = size_multiple(pipe)
    if height % multiple or width % multiple:
        raise ValueError(f"generation size {size} must be a multiple of {multiple} for this model")
    indices = [word_token_indices(pipe.tokenizer, it.prompt, word) for it in items]
    kwargs = dict(
        prompt=[it.prompt for it in items],
        negative_prompt=[it.negative_prompt for it in items],
        guidance_scale=items[0].guidance_scale,
        num_inference_steps=cfg.steps,
        height=height,
        width=width,
        generator=[torch.Generator("cpu").manual_seed(it.seed) for it in items],
        output_type="np",
    )
    if controls is not None:
        kwargs["image"] = [Image.fromarray(c) for c in controls]
        kwargs["controlnet_conditioning_scale"] = cfg.controlnet.conditioning_scale
    maps = None
    with torch.inference_mode():
        if capture:
            latent_hw = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
            weights = token_weights(indices, pipe.tokenizer.model_max_length)
            with capture_cross_attention(pipe.unet, cfg.xattn.factors) as store:
                store.begin(CaptureBatch(weights, latent_hw, selected_steps(cfg.steps, cfg.xattn.step_range)))
                images = pipe(**kwargs).images
                maps = store.maps()
        else:
            images = pipe(**kwargs).images
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8), maps, indices


def generate_halving(pipe, items, word, cfg, size, controls):
    """generate_batch, retried in two halves on a CUDA out-of-memory error (down to one image, then it is raised).

    Items carry their own seeds, so the halves produce the images the whole batch would have.
    """
    try:
        return generate_batch(pipe, items, word, cfg, size, controls)
    except torch.cuda.OutOfMemoryError:
        if len(items) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(items) // 2
        parts = [
            generate_halving(pipe, items[a:b], word, cfg, size, None if controls is None else controls[a:b])
            for a, b in ((0, half), (half, len(items)))
        ]
        images = np.concatenate([p[0] for p in parts])
        maps = {f: torch.cat([p[1][f] for p in parts]) for f in parts[0][1]}
        return images, maps, parts[0][2] + parts[1][2]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_items(
    pipes: Pipelines,
    items: list[GenItem],
    word: str,
    cfg: DiffusionConfig,
    shots: dict,
    progress: Progress | None = None,
) -> list[Generated]:
    """Generate every item in batches of cfg.batch_size (one mode per batch); return them in item order.

    `shots` maps a shot id to (image, bool mask) of the class; ControlNet items are conditioned on theirs.
    """
    out: list[Generated] = []
    by_source: dict[str, list[GenItem]] = {}
    for it in items:
        by_source.setdefault(it.source, []).append(it)
    progress = progress or Progress(f"{word}: diffusion", len(items), "images")
    for source, group in by_source.items():
        for batch in _chunks(group, cfg.batch_size):
            controls = supports = None
            if batch[0].control is None:
                pipe, size = pipes.sd, (cfg.image_size, cfg.image_size)
            else:
                pipe = pipes.controlnet[batch[0].control]
                # Shots of one batch may differ in aspect: generate each size group in its own call.
                sizes = {
                    it.shot_id: fit_size(*shots[it.shot_id][1].shape, cfg.image_size, size_multiple(pipe))
                    for it in batch
                }
                if len(set(sizes.values())) > 1:
                    for it in batch:
                        single = cfg.model_copy(update={"batch_size": 1})
                        out.extend(generate_items(pipes, [it], word, single, shots, progress))
                    continue
                size = next(iter(sizes.values()))
                supports = [resize_mask(shots[it.shot_id][1], size) for it in batch]
                controls = [
                    control_image(
                        it.control,
                        resize_image(shots[it.shot_id][0], size),
                        m,
                        pipes.hed,
                        cfg.controlnet.mask_color,
                        cfg.controlnet.hed_dilation,
                        f"shot {it.shot_id!r} ({it.control})",
                    )
                    for it, m in zip(batch, supports)
                ]
            images, maps, indices = generate_halving(pipe, batch, word, cfg, size, controls)
            progress.advance(len(batch), source)
            for row, it in enumerate(batch):
                soft = soft_map({f: m[row] for f, m in maps.items()}, size)
                mask, cut = coarse_mask(soft, cfg.xattn.threshold)
                out.append(
                    Generated(
                        it,
                        images[row],
                        soft,
                        mask,
                        cut,
                        indices[row],
                        None if controls is None else controls[row],
                        None if supports is None else supports[row],
                    )
                )
    order = {(it.source, it.index): n for n, it in enumerate(items)}
    return sorted(out, key=lambda g: order[(g.item.source, g.item.index)])


def to_sample(
    gen: Generated,
    cfg: DiffusionConfig,
    pipes: Pipelines,
    plan: FoldPlan,
    class_plan: ClassPlan,
    config_hash: str,
    embeddings: dict[str, str] | None = None,
) -> ShardSample:
    """Return the shard sample of a generated image: label, provenance metadata and extras (soft map, control)."""
    it = gen.item
    embeddings = embeddings or {}
    use_support = it.control is not None and cfg.controlnet.label == "support"
    fg = gen.support if use_support else gen.mask
    label = np.where(fg, class_plan.class_id, 0).astype(LABEL_DTYPE)
    models = ["sd"] + (
        [f"controlnet-{it.control}"] + (["hed"] if it.control in ("hed", "scribble") else []) if it.control else []
    )
    scores = {"xattn_fg_fraction": float(gen.mask.mean())}
    if gen.support is not None:
        scores["xattn_support_iou"] = iou(gen.mask, gen.support)
    embedding_id = embeddings.get(it.shot_id) if it.source == "embedding" else None
    meta = {
        "dataset": plan.dataset,
        "fold": plan.fold,
        "class_id": class_plan.class_id,
        "class_name": class_plan.class_name,
        "source": it.source,
        "mask_method": "support" if use_support else "xattn",
        "seed": it.seed,
        "shot_ids": [it.shot_id] if it.shot_id else list(class_plan.shot_ids),
        "embedding_id": embedding_id,
        "scores": scores,
        "config_hash": config_hash,
        "prompt": it.prompt,
        "negative_prompt": it.negative_prompt,
        "model_ids": pipes.model_ids(*models),
        "generation": {
            "mode": "controlnet" if it.control else it.source,
            "control": it.control,
            "steps": cfg.steps,
            "guidance_scale": it.guidance_scale,
            "scheduler": type(pipes.sd.scheduler).__name__,
            "dtype": str(pipes.dtype).removeprefix("torch."),
            "conditioning_scale": cfg.controlnet.conditioning_scale if it.control else None,
        },
        "xattn": {
            "factors": list(cfg.xattn.factors),
            "step_range": list(cfg.xattn.step_range),
            "threshold": cfg.xattn.threshold,
            "cut": gen.cut,
            "token_indices": gen.token_indices,
        },
        "class_names": {str(class_plan.class_id): class_plan.class_name},
    }
    extras = {}
    if cfg.xattn.store_soft_map:
        extras["xattn.npy"] = gen.soft.astype(np.float16)
    if use_support:
        extras["xattn_mask.png"] = gen.mask  # the coarse mask, kept beside the support-mask label
    if gen.control is not None:
        extras["control.png"] = gen.control[..., 0]
    key = sample_key(plan.dataset, plan.fold, class_plan.class_id, it.source, it.index)
    return ShardSample(key, gen.image, label, meta, extras)


def class_shots(dataset: SegDataset, class_plan: ClassPlan) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return {shot id: (RGB image, bool mask of the class)} for a class's real shots."""
    out = {}
    for shot_id in class_plan.shot_ids:
        record = dataset.load(shot_id)
        out[shot_id] = (record.image, binary_mask(record.label, class_plan.class_id))
    return out


def diffusion_samples(
    pipes: Pipelines, dataset: SegDataset, config: MaskforgeConfig, plan: FoldPlan, class_plan: ClassPlan
) -> list[ShardSample]:
    """Generate one novel class's diffusion samples (text, then ControlNet per shot and condition)."""
    cfg = config.diffusion
    if cfg is None:
        raise ValueError("config has no 'diffusion' section; the diffusion stage has nothing to do")

    word = class_word(class_plan.class_name)
    items = plan_items(cfg, config.run.data_seed(), class_plan.class_id, word, class_plan.shot_ids)
    shots = class_shots(dataset, class_plan) if cfg.controlnet.conditions else {}
    config_hash = config.hash()
    files = {}
    if cfg.embedding.samples:  # the bank must already hold every shot's embedding: never a silent fallback
        files = {
            shot: shot_embedding(pipes, dataset, config, plan, class_plan, shot, learn=False)
            for shot in class_plan.shot_ids
        }
    tokens = {embedding_token(k): files[shot] for k, shot in enumerate(class_plan.shot_ids) if shot in files}
    load_embeddings(pipes.sd, tokens)
    try:
        generated = generate_items(pipes, items, word, cfg, shots)
    finally:
        unload_embeddings(pipes.sd, list(tokens))  # the next class loads its own shots' embeddings
    report = pipes.compile_report()
    if report:  # the first class of a process (or a new image shape) paid the compile: say so once
        print(f"{class_plan.class_name}: diffusion: {report}")
    ids = {shot: path.name for shot, path in files.items()}
    return [to_sample(g, cfg, pipes, plan, class_plan, config_hash, ids) for g in generated]
