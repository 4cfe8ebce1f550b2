"""HSNet episodic evaluation on a fold's novel classes: mIoU / FB-IoU, real-only and real + synthetic supports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from maskforge.eval.episode_data import EpisodeImages
from maskforge.models.device import resolve_device, torch_threads
from maskforge.models.hsnet.checkpoint import load_checkpoint
from maskforge.models.hsnet.segmenter import HSNetSegmenter, SupportState, vote_masks
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.episode_results import (
    choose_synthetic,
    episode_record,
    episode_rows,
    episode_trend,
    episodes_shown,
    open_episodes,
    score_episodes,
)
from maskforge.tasks.hsnet.config import HsnetConfig
from maskforge.tasks.hsnet.preflight import check_checkpoint, check_eval_inputs
from maskforge.tasks.learner import Record, Shown


def load_segmenter(config: HsnetConfig) -> tuple[HSNetSegmenter, str]:
    """Load the checkpoint the config names into a segmenter on the configured device; returns (segmenter, path)."""
    path = check_checkpoint(config)
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
    run = check_eval_inputs(config)  # before the model loads: a wrong input fails at once
    segmenter, ckpt = load_segmenter(config)
    dataset, fold, episodes = open_episodes(config.dataset, e.split, e.episodes, e.shots, e.seed)
    images = EpisodeImages(dataset, run)
    synthetic: dict[int, SupportState] = {}
    if run is not None:
        chosen = choose_synthetic(run, fold.novel, e.synthetic_per_class, e.seed, e.synthetic_run)
        for cid, keys in chosen.items():
            pairs = [(sample.image, sample.label == cid) for sample in map(run.get, keys)]
            synthetic[cid] = segmenter.condition(pairs)  # once per class, reused by every episode of the class
    real_name = f"{e.shots}R"
    syn_name = f"{e.shots}R+{e.synthetic_per_class}S"

    def predict(ep, q_image, size, pairs) -> dict:
        real_shots = segmenter.shot_masks(segmenter.condition(pairs), [q_image])  # (K, 1, H, W)
        out = {real_name: vote_masks(real_shots)[0].cpu().numpy()}
        if run is not None:  # the same vote over K real + N synthetic 1-shot masks; the real ones are reused
            syn_shots = segmenter.shot_masks(synthetic[ep.class_id], [q_image])
            out[syn_name] = vote_masks(torch.cat([real_shots, syn_shots]))[0].cpu().numpy()
        return out

    names = [real_name, syn_name] if run is not None else [real_name]
    scores = score_episodes(episodes, images, fold.novel, names, predict, log)
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
        **scores,
    }


def benchmark_rows(config: HsnetConfig, result: dict) -> list[dict]:
    """Return the benchmark-table rows of an evaluation: one per setting (KR, and KR+NS with synthetic supports)."""
    return episode_rows("hsnet", config.hash(), result)


def record(config: HsnetConfig, result: dict) -> Record:
    """What an evaluation appends and publishes (the learner protocol's record): rows, table and trend artifacts."""
    return episode_record("hsnet", "HSNet", config.hash(), result, trend_markdown)


def show(result: dict) -> Shown:
    """What `maskforge hsnet eval` prints: the settings' and baselines' scores, then where the rows went."""
    return episodes_shown(f"HSNet {result['backbone']}", result)


def trend_markdown(table, dataset: str, fold: int, shots: int, last: int = 20) -> str:
    """Return markdown comparing HSNet's rows of one (dataset, fold, shots) over time, per setting, newest last."""
    return episode_trend(table, "hsnet", "HSNet", dataset, fold, shots, last)
