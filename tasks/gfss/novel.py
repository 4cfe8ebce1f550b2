"""GFSS incremental stage: per run seed and step, pick shots, imprint, fine-tune (FINETUNE or GAPS, ± synthetic)."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.episode_data import synthetic_keys
from maskforge.eval.folds import Fold
from maskforge.eval.gfss_protocol import (
    ClassMap,
    gaps_run_seeds,
    novel_only_candidates,
    select_supports,
    task_stream,
    vrfs_probability,
)
from maskforge.eval.seeds import derive_seed
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.gfss.checkpoint import load_gfss, save_gfss
from maskforge.models.gfss.network import (
    GfssNet,
    freeze_batchnorm,
    imprint_vectors,
    masked_average_pool,
    set_train_mode,
)
from maskforge.storage.fs import atomic_write_bytes, exists, join, read_bytes
from maskforge.storage.shards import sha256_file
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.gfss.base import autocast, poly_lr
from maskforge.tasks.gfss.buffer import buffer_score, uniform_interval_buffer
from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.gfss.copy_paste import context_similar
from maskforge.tasks.gfss.feed import NovelData, NovelFeed, make_loader, normalize
from maskforge.tasks.gfss.preflight import NOVEL_MANIFEST, base_image_ids, check_novel_inputs, open_fold
from maskforge.tasks.progress import eta
from maskforge.tasks.synthetic_runs import open_synthetic_run

#: A finished run seed's record in the novel folder (its checkpoints are written before it): a rerun keeps the run.
RUN_RECORD = "run{:02d}.json"
#: Version of the replay buffer's recipe, part of its cache key (2: the seed no longer hashes the checkpoint bytes).
BUFFER_RECIPE = 2


def load_base(config: GfssConfig, fold: Fold) -> tuple[GfssNet, str]:
    """Load the base checkpoint; a missing file, or a class count or backbone unlike the config's, is a ConfigError."""
    path = config.base_checkpoint()
    if not Path(path).is_file():
        raise ConfigError(
            f"base checkpoint {path!r} not found; train it first (maskforge gfss train-base CONFIG) or set "
            "base.checkpoint"
        )
    net, _ = load_gfss(path)
    expected = 1 + len(fold.base)
    if net.spec.num_classes != expected:
        raise ConfigError(
            f"{path}: the base checkpoint has {net.spec.num_classes} classes; {fold.dataset} fold {fold.index} needs "
            f"{expected} (background + {len(fold.base)} base classes)"
        )
    if net.spec.backbone != config.model.backbone:
        raise ConfigError(
            f"{path}: the base checkpoint holds a {net.spec.backbone} backbone; model.backbone says "
            f"{config.model.backbone!r}"
        )
    return net, path


def open_synthetic(config: GfssConfig, fold: Fold, needed: list[int]) -> dict[str, dict[int, list[str]]]:
    """Open and verify novel.synthetic_runs; return {run url: {class: sample keys}} for the needed classes.

    An incomplete or missing run, a run of another dataset, fold or toy world, or one without samples of a needed
    class is a ConfigError naming the run, the class and what the run holds.
    """
    out = {}
    for url in config.novel.synthetic_runs:
        # hashed here, once: the feed's DataLoader workers read these runs without verifying
        reader = open_synthetic_run(
            url, "novel.synthetic_runs", config.dataset, fold=True, world=True, verify_shards=True
        )
        keys = synthetic_keys(reader, fold.novel, generated_only=True)
        held = {c: len(k) for c, k in keys.items() if k}
        for cid in needed:
            if not keys.get(cid):
                raise ConfigError(
                    f"novel.synthetic_runs: {url} holds no generated sample of class {cid}; it holds "
                    f"{held or 'no generated sample of a novel class'} (class: samples; 'real'-source scenes excluded)"
                )
        out[url] = {c: keys[c] for c in needed}
    return out


def choose_shots(config: GfssConfig, dataset: SegDataset, fold: Fold, run_seed: int) -> dict[int, list[str]]:
    """Return each novel class's real shots for one run: images with the class and no other novel class (GAPS)."""
    index = dataset.class_index(config.novel.split)
    rng = np.random.default_rng(run_seed)
    names = dataset.classes()
    shots = {}
    for cid in sorted(fold.novel):
        candidates = novel_only_candidates(index, fold.novel, cid)
        pixels = lambda image_id, c=cid: int((dataset.load(image_id).label == c).sum())  # noqa: E731
        shots[cid] = select_supports(candidates, config.novel.shots, rng, pixels, cid, names[cid])
    return shots


@torch.no_grad()
def class_vectors(net: GfssNet, dataset: SegDataset, image_ids: list[str], class_id: int, device) -> torch.Tensor:
    """Return (S, C) imprinting vectors of one class, one per shot (GAPS: features upsampled to the mask,
    L2-normalised per pixel, averaged over the mask; the caller averages over shots)."""
    out = []
    for image_id in image_ids:
        record = dataset.load(image_id)
        feats = net.features(normalize([record.image]).to(device))
        mask = torch.from_numpy(record.label == class_id)[None].to(device)
        out.append(imprint_vectors(feats, mask)[0])
    return torch.stack(out)


@torch.no_grad()
def global_vectors(net: GfssNet, dataset: SegDataset, image_ids: list[str], device) -> np.ndarray:
    """Return (N, D) globally average-pooled, L2-normalised layer4 features (GAPS's context similarity)."""
    out = []
    for image_id in image_ids:
        _, layer4 = net.backbone.forward_with_layer4(normalize([dataset.load(image_id).image]).to(device))
        out.append(F.normalize(layer4.float().mean((2, 3)), dim=1)[0].cpu().numpy())
    return np.stack(out)


@torch.no_grad()
def replay_buffer(
    config: GfssConfig, net: GfssNet, ckpt: str, dataset: SegDataset, fold: Fold, device, log: Callable[[str], None]
) -> list[str]:
    """GAPS's memory-replay buffer (uniform_interval) of base images, cached per base checkpoint in base_dir()."""
    n = config.novel
    # BUFFER_RECIPE versions how the buffer is computed: a cache written by an older recipe (another seed rule) in a
    # reused base folder would otherwise be read back as today's buffer
    key_parts = [
        BUFFER_RECIPE,
        sha256_file(ckpt),
        n.split,
        n.buffer_size,
        n.buffer_images,
        json.dumps(config.dataset.resolved()),
    ]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    cache = join(config.base_dir(), f"buffer-{key}.json")
    if exists(cache):
        return json.loads(read_bytes(cache))["images"]
    ids = base_image_ids(dataset, n.split, fold)
    if n.buffer_images:
        ids = ids[: n.buffer_images]
    model_ids = ClassMap(tuple(fold.base), ()).model_ids()
    weights = F.normalize(net.head.pixel_classifier.class_mat.weight.detach().flatten(1), dim=1)
    scores: dict[int, list[tuple[str, float]]] = {c: [] for c in fold.base}
    start = time.perf_counter()
    for image_id in ids:
        record = dataset.load(image_id)
        feats = net.features(normalize([record.image]).to(device))
        for cid in record.class_ids:
            if cid not in scores:
                continue
            mask = record.label == cid
            vector = F.normalize(masked_average_pool(feats, torch.from_numpy(mask)[None].to(device)), dim=1)[0]
            cosine = float(vector @ weights[model_ids[cid]])
            scores[cid].append((image_id, buffer_score(cosine, float(mask.mean()))))
    scores = {c: s for c, s in scores.items() if s}
    # seeded by what the buffer is, not by the checkpoint's bytes: its metadata holds output paths, and the same
    # weights trained into another folder must give the same buffer
    rng = np.random.default_rng(derive_seed("gfss-buffer", n.split, n.buffer_size, n.buffer_images))
    chosen = uniform_interval_buffer(scores, n.buffer_size, rng)
    log(f"replay buffer: {len(chosen)} of {len(ids)} base images ({time.perf_counter() - start:.1f} s)")
    atomic_write_bytes(cache, json.dumps({"checkpoint": ckpt, "images": chosen}, indent=1).encode())
    return chosen


def random_buffer(config: GfssConfig, dataset: SegDataset, fold: Fold) -> list[str]:
    """AlignDiff's FINETUNE base images: novel.buffer_size base images of novel.split drawn at random (seeded).

    AlignDiff (appendix D.3) runs fine-tune methods with GAPS's settings but pastes onto 500 randomly chosen base
    images: GAPS's `baseset_type: random` (fs_incremental_trainer.py:69-71) without its guided selection. The
    draw depends only on the split, the buffer size and the base set, so every run seed and setting share it.
    """
    n = config.novel
    ids = base_image_ids(dataset, n.split, fold)
    if n.buffer_images:
        ids = ids[: n.buffer_images]
    if not ids:
        raise ConfigError(f"novel.split: {dataset.name} split {n.split!r} has no base image (all hold a novel class)")
    rng = np.random.default_rng(derive_seed("gfss-random-buffer", n.split, n.buffer_size, n.buffer_images))
    return [ids[i] for i in sorted(rng.choice(len(ids), size=min(n.buffer_size, len(ids)), replace=False).tolist())]


def base_images(
    config: GfssConfig, net: GfssNet, ckpt: str, dataset: SegDataset, fold: Fold, device, log: Callable[[str], None]
) -> list[str]:
    """The base images a method pastes onto: GAPS's guided buffer (gaps), random ones (finetune), none (shot-only)."""
    if config.novel.method == "gaps":
        return replay_buffer(config, net, ckpt, dataset, fold, device, log)
    if config.novel.method == "finetune":
        return random_buffer(config, dataset, fold)
    return []


def train_gfss_novel(config: GfssConfig, log: Callable[[str], None] = print) -> dict:
    """Run the incremental stage for every run seed and step; write one checkpoint per (run, step) and novel.json.

    Returns novel.json's content plus {"complete": True}. A folder whose novel.json exists is reported, not rerun.
    """
    with torch_threads(config.run.threads):
        return _novel(config, log)


def finetune_step(
    net: GfssNet,
    teacher: torch.nn.Module | None,
    optimiser: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    feature_reg: float,
    device: torch.device,
    amp: bool,
) -> float:
    """One fine-tuning step: cross-entropy (ignore -1) + feature_reg * MSE(features, teacher features); returns loss."""
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    with autocast(device, amp):
        feats = net.features(images)
        logits = F.interpolate(net.head(feats), images.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss_fn(logits.float(), labels)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(images)
            loss = loss + feature_reg * F.mse_loss(feats.float(), target.float())
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def _finetune(
    config: GfssConfig, net: GfssNet, feed: NovelFeed, device, log: Callable[[str], None], label: str
) -> list[float]:
    """Fine-tune a step: BN frozen, SGD (backbone / head lr), poly decay, CE + λ·MSE to the previous backbone."""
    n = config.novel
    teacher = copy.deepcopy(net.backbone).eval() if n.feature_reg > 0 else None
    if teacher is not None:
        teacher.requires_grad_(False)
    # GAPS freezes every norm twice over: eval mode (running stats) and requires_grad_(False) on weight and bias
    # (fs_incremental_trainer.py:419-422), so no affine tensor reaches the optimiser
    freeze_batchnorm(net)
    set_train_mode(net, frozen_bn=True)
    backbone_params = [p for p in net.backbone.parameters() if p.requires_grad]
    groups = [
        {"params": backbone_params, "lr": n.lr_backbone},
        {"params": list(net.head.parameters()), "lr": n.lr_head},
    ]
    optimiser = torch.optim.SGD(groups, momentum=n.momentum, weight_decay=n.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
    losses = []
    with make_loader(feed, n.batch_size, n.workers, pin=device.type == "cuda") as batches:
        for it in range(n.iterations):
            for group, lr in zip(optimiser.param_groups, (n.lr_backbone, n.lr_head)):
                group["lr"] = poly_lr(lr, it, n.iterations, n.poly_power)
            images, labels = next(batches)
            amp = config.run.amp
            loss = finetune_step(net, teacher, optimiser, loss_fn, images, labels, n.feature_reg, device, amp)
            losses.append(loss)
    log(f"{label}: loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}")
    net.eval()
    return losses


def _novel(config: GfssConfig, log: Callable[[str], None]) -> dict:
    """The body of train_gfss_novel."""
    out, n = config.novel_dir(), config.novel
    manifest_url = join(out, NOVEL_MANIFEST)
    if not check_novel_inputs(config):  # before a network loads: a wrong input fails in a second
        log(f"already trained: {out}")
        return {**json.loads(read_bytes(manifest_url)), "complete": True}
    dataset, fold = open_fold(config)
    base_net, ckpt = load_base(config, fold)
    stream = task_stream(fold.novel, n.classes_per_step)
    synthetic = open_synthetic(config, fold, sorted(fold.novel))
    device = resolve_device(config.run.device)
    base_net = base_net.to(device).eval()
    buffer = base_images(config, base_net, ckpt, dataset, fold, device, log)
    runs, start = [], time.perf_counter()
    total, done = n.runs * len(stream) * n.iterations, 0
    crop = config.base.crop_size
    for r, run_seed in enumerate(gaps_run_seeds(n.runs, n.master_seed)):
        # a run seed is independent of the others (its own shots, seeds and copy of the base model): one finished
        # by an interrupted attempt is kept, its record and checkpoints as written then
        record_url = join(out, RUN_RECORD.format(r))
        if exists(record_url):
            runs.append(json.loads(read_bytes(record_url)))
            done += n.iterations * len(stream)
            log(f"run {r} (seed {run_seed}): finished by an earlier attempt, kept ({record_url})")
            continue
        shots = choose_shots(config, dataset, fold, run_seed)
        net, class_map, steps = copy.deepcopy(base_net), ClassMap(tuple(fold.base), ()), []
        for s, classes in enumerate(stream):
            torch.manual_seed(derive_seed("gfss-novel", run_seed, s))
            new = torch.cat([class_vectors(net, dataset, shots[c], c, device).mean(0, keepdim=True) for c in classes])
            class_map = class_map.with_novel(classes)
            net.replace_head(net.head.expanded(class_map.num_classes, F.normalize(new, dim=1)))
            seen = list(class_map.novel)
            data = NovelData(
                dataset=config.dataset,
                fold_novel=tuple(fold.novel),
                class_map=class_map,
                step_classes=tuple(classes),
                method=n.method,
                shots={c: shots[c] for c in seen},
                crop=crop,
                scale=tuple(config.base.scale),
                paste_scale=tuple(n.paste_scale),
                seed=derive_seed("gfss-feed", run_seed, s),
                synthetic_share=n.synthetic_share if synthetic else 0.0,
                synthetic={url: [k for c in classes for k in keys[c]] for url, keys in synthetic.items()},
            )
            if n.method in ("gaps", "finetune"):
                data.buffer = buffer
                data.p_vrfs = vrfs_probability(len(fold.base), len(seen), n.shots, n.buffer_size)
            if n.method == "gaps":
                buffer_vectors = global_vectors(net, dataset, buffer, device)
                data.context_sets = {
                    c: context_similar(global_vectors(net, dataset, shots[c], device), buffer_vectors, n.context_top)
                    for c in classes
                }
                data.context_prob = n.context_prob
            else:  # AlignDiff D.3: FINETUNE pastes without context-aware sampling
                data.context_prob = 0.0
            losses = _finetune(config, net, NovelFeed(data), device, log, f"run {r} (seed {run_seed}) step {s}")
            done += n.iterations
            elapsed = time.perf_counter() - start
            log(f"iterations {done}/{total} ({elapsed:.1f} s, {eta(done, total, elapsed)})")
            path = join(out, f"run{r:02d}-step{s:02d}.safetensors")
            extra = {
                "stage": "novel",
                "run_seed": run_seed,
                "step": s,
                "class_map": {"base": list(fold.base), "novel": seen},
            }
            save_gfss(path, copy.deepcopy(net).cpu(), config.resolved(), extra)
            steps.append(
                {"classes": list(classes), "novel_learned": seen, "checkpoint": path, "final_loss": losses[-1]}
            )
        runs.append({"seed": run_seed, "shots": {str(c): ids for c, ids in shots.items()}, "steps": steps})
        atomic_write_bytes(record_url, json.dumps(runs[-1], indent=2).encode())  # after the run's checkpoints
    report = {
        "novel_dir": out,
        "setting": config.setting(),
        "method": n.method,
        "shots": n.shots,
        "base_checkpoint": ckpt,
        "synthetic_runs": list(n.synthetic_runs),
        "buffer_images": len(buffer),
        "task_stream": [list(c) for c in stream],
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_bytes(join(out, "config.yaml"), yaml.safe_dump(config.resolved(), sort_keys=False).encode())
    atomic_write_bytes(manifest_url, json.dumps(report, indent=2).encode())  # written last: it marks completion
    return {**report, "complete": True}
