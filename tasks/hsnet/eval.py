"""HSNet episodic evaluation on a fold's novel classes: mIoU / FB-IoU, real-only and real + synthetic supports."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from maskforge.eval.datasets import open_dataset
from maskforge.eval.episode_data import EpisodeImages, binary_target, synthetic_keys
from maskforge.eval.folds import get_fold
from maskforge.eval.hsnet_episodes import eval_episodes
from maskforge.eval.metrics import IoUAccumulator
from maskforge.eval.seeds import rng_for
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.hsnet.checkpoint import CheckpointError, load_checkpoint
from maskforge.models.hsnet.segmenter import HSNetSegmenter, SupportState, vote_masks
from maskforge.storage.reader import RunReader
from maskforge.storage.results import HSNET_PROTOCOL, code_version, rows_as_dicts
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks import charts
from maskforge.tasks.charts import percent
from maskforge.tasks.hsnet.config import HsnetConfig


def prior_mask(support_masks: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Support-mask prior baseline: each support mask resized (nearest) to the query size, combined by HSNet's vote."""
    resized = []
    for mask in support_masks:
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        resized.append(torch.nn.functional.interpolate(t, size, mode="nearest")[0, 0] > 0.5)
    return vote_masks(torch.stack(resized)[:, None])[0].numpy()


def load_segmenter(config: HsnetConfig) -> tuple[HSNetSegmenter, str]:
    """Load the checkpoint the config names into a segmenter on the configured device; returns (segmenter, path)."""
    path = config.checkpoint_path()
    if not Path(path).is_file():
        raise CheckpointError(
            f"eval.checkpoint: {path!r} not found; train first (maskforge hsnet train CONFIG) or set eval.checkpoint"
        )
    net, meta = load_checkpoint(path)
    if net.spec.backbone != config.model.backbone:
        raise ConfigError(
            f"model.backbone: the checkpoint {path} holds a {net.spec.backbone} HSNet, the config says "
            f"{config.model.backbone!r}"
        )
    if meta is None:  # an authors' checkpoint: backbone inferred from its keys, input size from the config
        net.spec = replace(net.spec, img_size=config.model.img_size)
    elif net.spec.img_size != config.model.img_size:
        raise ConfigError(
            f"model.img_size: the checkpoint {path} was trained at {net.spec.img_size} px, the config says "
            f"{config.model.img_size}"
        )
    return HSNetSegmenter(net, resolve_device(config.run.device), config.eval.batch_size), path


def eval_hsnet(config: HsnetConfig, log: Callable[[str], None] = print) -> dict:
    """Evaluate a checkpoint on the fold's novel classes; return settings (KR, with synthetic KR+NS) and baselines.

    Episodes: eval.episodes, deterministic from eval.seed (FSS-1000: one per image). Each setting reports mIoU (mean
    over the fold's classes of accumulated foreground IoU) and FB-IoU (mean of pooled background and foreground IoU);
    ignore pixels never count. Baselines: all-background and the support-mask prior. Runs with run.threads torch
    CPU threads (restored afterwards).
    """
    with torch_threads(config.run.threads):
        return _evaluate(config, log)


def _evaluate(config: HsnetConfig, log: Callable[[str], None]) -> dict:
    """The body of eval_hsnet."""
    e = config.eval
    segmenter, ckpt = load_segmenter(config)
    dataset = open_dataset(config.dataset)
    fold = get_fold(dataset.name, config.dataset.fold, config.dataset.coco_fold_mode)
    if e.split not in dataset.splits():
        raise ConfigError(
            f"eval.split: unknown split {e.split!r} of {dataset.name}; expected one of {dataset.splits()}"
        )
    episodes = eval_episodes(
        dataset.class_index(e.split),
        fold.novel,
        e.episodes,
        e.shots,
        e.seed,
        dataset.name,
        fold.index,
        per_image=dataset.name == "fss",
    )
    run = RunReader(e.synthetic_run) if e.synthetic_run else None
    images = EpisodeImages(dataset, run)
    synthetic: dict[int, SupportState] = {}
    if run is not None:
        keys = synthetic_keys(run, fold.novel)
        for cid, class_keys in keys.items():
            if len(class_keys) < e.synthetic_per_class:
                raise ConfigError(
                    f"eval.synthetic_per_class: run {e.synthetic_run} holds {len(class_keys)} sample(s) of class "
                    f"{cid}, fewer than the {e.synthetic_per_class} asked for"
                )
            rng = rng_for("hsnet-eval-synthetic", cid, e.seed)
            chosen = sorted(
                class_keys[int(i)] for i in rng.choice(len(class_keys), e.synthetic_per_class, replace=False)
            )
            pairs = []
            for key in chosen:
                sample = run.get(key)
                pairs.append((sample.image, sample.label == cid))
            synthetic[cid] = segmenter.condition(pairs)  # once per class, reused by every episode of the class
    real_name = f"{e.shots}R"
    syn_name = f"{e.shots}R+{e.synthetic_per_class}S"
    acc = {real_name: IoUAccumulator(fold.novel)}
    if run is not None:
        acc[syn_name] = IoUAccumulator(fold.novel)
    base = {"all-background": IoUAccumulator(fold.novel), "support-prior": IoUAccumulator(fold.novel)}
    start = time.perf_counter()
    for n, ep in enumerate(episodes, 1):
        q_image, q_label = images.get(ep.query_id)
        target = binary_target(q_label, ep.class_id)
        supports = [images.get(s) for s in ep.support_ids]
        pairs = [(img, lab == ep.class_id) for img, lab in supports]
        real_shots = segmenter.shot_masks(segmenter.condition(pairs), [q_image])  # (K, 1, H, W)
        acc[real_name].add(ep.class_id, vote_masks(real_shots)[0].cpu().numpy(), target)
        if run is not None:  # the same vote over K real + N synthetic 1-shot masks; the real ones are reused
            syn_shots = segmenter.shot_masks(synthetic[ep.class_id], [q_image])
            acc[syn_name].add(ep.class_id, vote_masks(torch.cat([real_shots, syn_shots]))[0].cpu().numpy(), target)
        base["all-background"].add(ep.class_id, np.zeros(target.shape, bool), target)
        base["support-prior"].add(ep.class_id, prior_mask([m for _, m in pairs], target.shape), target)
        if n % 200 == 0 or n == len(episodes):
            elapsed = time.perf_counter() - start
            log(f"episode {n}/{len(episodes)}: {real_name} mIoU {acc[real_name].miou():.4f} ({elapsed:.1f} s)")
    return {
        "checkpoint": ckpt,
        "backbone": segmenter.net.spec.backbone,
        "img_size": segmenter.img_size,
        "dataset": dataset.name,
        "fold": fold.index,
        "split": e.split,
        "shots": e.shots,
        "episodes": len(episodes),
        "seed": e.seed,
        "synthetic_source": e.synthetic_run or "none",
        "synthetic_per_class": e.synthetic_per_class if run is not None else 0,
        "settings": {name: a.summary() for name, a in acc.items()},
        "baselines": {name: a.summary() for name, a in base.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }


def benchmark_rows(config: HsnetConfig, result: dict) -> list[dict]:
    """Return the benchmark-table rows of an evaluation: one per setting (KR, and KR+NS with synthetic supports).

    Protocol "fss-episodes", evaluated = the episode count, one run, metrics {"miou", "fb_iou"}.
    """
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    version_text, config_hash = code_version(), config.hash()
    rows = []
    for setting, summary in result["settings"].items():
        synthetic = "+" in setting
        rows.append(
            {
                "created_at": created,
                "model": "hsnet",
                "backbone": result["backbone"],
                "checkpoint": result["checkpoint"],
                "dataset": result["dataset"],
                "fold": result["fold"],
                "split": result["split"],
                "shots": result["shots"],
                "protocol": HSNET_PROTOCOL,
                "setting": setting,
                "synthetic_source": result["synthetic_source"] if synthetic else "none",
                "synthetic_per_class": result["synthetic_per_class"] if synthetic else 0,
                "evaluated": result["episodes"],
                "runs": 1,
                "seed": result["seed"],
                "metrics": {"miou": summary["miou"], "fb_iou": summary["fb_iou"]},
                "class_iou": summary["class_iou"],
                "config_hash": config_hash,
                "code_version": version_text,
            }
        )
    return rows


def trend_markdown(table, dataset: str, fold: int, shots: int, last: int = 20) -> str:
    """Return markdown comparing the benchmark rows of one (dataset, fold, shots) over time, per setting, newest last:
    mIoU and FB-IoU in %, and the change of mIoU from the previous run of the same setting. Rows of other protocols
    (GFSS) in the same table are left out."""
    rows = [
        r
        for r in rows_as_dicts(table)
        if r["protocol"] == HSNET_PROTOCOL and (r["dataset"], r["fold"], r["shots"]) == (dataset, fold, shots)
    ]
    columns = [
        ("backbone", lambda r: r["backbone"]),
        ("checkpoint", lambda r: r["checkpoint"].rsplit("/", 1)[-1]),
        ("mIoU", percent("miou")),
        ("FB-IoU", percent("fb_iou")),
    ]
    return charts.trend_markdown(rows, "HSNet", f"{dataset} fold {fold}, {shots}-shot", "miou", "mIoU", columns, last)
