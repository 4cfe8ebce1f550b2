"""DiffewS episodic evaluation on a fold's novel classes (HSNet's protocol): KR, KR+NS, trivial baselines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from maskforge.eval.episode_data import EpisodeImages
from maskforge.models.device import torch_threads
from maskforge.models.diffews.segmenter import BankState, DiffewsSegmenter, merge_banks
from maskforge.tasks.diffews.config import DiffewsConfig
from maskforge.tasks.diffews.model import autocast_dtype, device_of, embedding_sha, trained_network
from maskforge.tasks.diffews.preflight import check_eval_inputs, check_trained_size
from maskforge.tasks.episode_results import (
    choose_synthetic,
    episode_record,
    episode_rows,
    episode_trend,
    episodes_shown,
    open_episodes,
    score_episodes,
)
from maskforge.tasks.learner import Record, Shown

#: The backbone column of DiffewS rows in the benchmark table.
BACKBONE = "sd-unet"


class LabelsAtSize:
    """EpisodeImages whose labels come resized (nearest) to a side x side square: the authors score at the model's
    input size with the ground truth resized nearest (aim-uofa/DiffewS d12c396, evaluation_util/data/coco.py:41-42,
    main_oss.py:176-177: use_original_imgsize off in every released eval script)."""

    def __init__(self, images: EpisodeImages, side: int) -> None:
        """Wrap `images`; labels come back side x side."""
        self.images, self.side = images, side

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (the image as stored, its label resized nearest to side x side)."""
        image, label = self.images.get(key)
        t = torch.from_numpy(np.asarray(label).astype(np.float32))[None, None]
        resized = torch.nn.functional.interpolate(t, (self.side, self.side), mode="nearest")[0, 0]
        return image, resized.numpy().astype(label.dtype)


def load_segmenter(config: DiffewsConfig) -> tuple[DiffewsSegmenter, str, dict | None]:
    """Return (segmenter on the configured device and precision, checkpoint path, checkpoint metadata)."""
    net, path, meta = trained_network(config)
    check_trained_size(config, path, meta)
    device = device_of(config)
    e = config.eval
    segmenter = DiffewsSegmenter(
        net,
        config.model.img_size,
        device,
        autocast_dtype(config, device),
        e.relative_threshold,
        e.threshold_floor,
        e.threshold_rule,
    )
    return segmenter, path, meta


def eval_diffews(config: DiffewsConfig, log: Callable[[str], None] = print) -> dict:
    """Evaluate a DiffewS checkpoint on the fold's novel classes; return settings (KR and, with a synthetic run,
    KR+NS: the run's N samples of the class join the K real supports in the KV bank) and the trivial baselines.

    Episodes are HSNet's (eval/hsnet_episodes.py: eval.episodes, seed eval.seed); mIoU and FB-IoU are HSNet's
    (eval/metrics.py). Synthetic supports are drawn as for HSNet, so both learners see the same ones.
    """
    with torch_threads(config.run.threads):
        return _evaluate(config, log)


def _evaluate(config: DiffewsConfig, log: Callable[[str], None]) -> dict:
    """The body of eval_diffews."""
    e = config.eval
    run = check_eval_inputs(config)  # before the model loads: a wrong input fails at once
    segmenter, ckpt, meta = load_segmenter(config)
    dataset, fold, episodes = open_episodes(config.dataset, e.split, e.episodes, e.shots, e.seed)
    images = EpisodeImages(dataset, run)
    if e.score_at == "img_size":
        images = LabelsAtSize(images, segmenter.img_size)
    synthetic: dict[int, BankState] = {}
    if run is not None:
        for cid, keys in choose_synthetic(run, fold.novel, e.synthetic_per_class, e.seed, e.synthetic_run).items():
            samples = [run.get(k) for k in keys]
            latents = segmenter.support_latents(
                [s.image for s in samples], [s.label == cid for s in samples], [f"{e.synthetic_run}:{k}" for k in keys]
            )
            synthetic[cid] = segmenter.bank_state(*latents)  # one support pass per class, reused by its episodes
    real_name = f"{e.shots}R"
    syn_name = f"{e.shots}R+{e.synthetic_per_class}S"

    def predict(ep, q_image, size, pairs) -> dict:
        query = segmenter.query_latents([q_image])
        supports = segmenter.support_latents([img for img, _ in pairs], [m for _, m in pairs], list(ep.support_ids))
        real = segmenter.bank_state(*supports)  # one support pass, reused by both settings
        out = {real_name: segmenter.predict(query, size, extra=real)}
        if run is not None:
            out[syn_name] = segmenter.predict(query, size, extra=merge_banks(synthetic[ep.class_id], real))
        return out

    names = [real_name, syn_name] if run is not None else [real_name]
    scores = score_episodes(episodes, images, fold.novel, names, predict, log)
    return {
        "checkpoint": ckpt,
        "backbone": BACKBONE,
        "img_size": segmenter.img_size,
        "score_at": e.score_at,
        "threshold_rule": e.threshold_rule,
        "dataset": dataset.name,
        "fold": fold.index,
        "split": e.split,
        "shots": e.shots,
        "episodes": len(episodes),
        "seed": e.seed,
        "synthetic_source": e.synthetic_run or "none",
        "synthetic_per_class": e.synthetic_per_class if run is not None else 0,
        "text_embedding_sha256": embedding_sha(segmenter.net.text_embedding),
        "trained_text_embedding_sha256": (meta or {}).get("train", {}).get("text_embedding_sha256"),
        **scores,
    }


def benchmark_rows(config: DiffewsConfig, result: dict) -> list[dict]:
    """Return the benchmark-table rows of an evaluation: one per setting (KR, and KR+NS with synthetic supports)."""
    return episode_rows("diffews", config.hash(), result)


def record(config: DiffewsConfig, result: dict) -> Record:
    """What an evaluation appends and publishes (the learner protocol's record): rows, table and trend artifacts."""
    return episode_record("diffews", "DiffewS", config.hash(), result, trend_markdown)


def show(result: dict) -> Shown:
    """What `maskforge diffews eval` prints: the settings' and baselines' scores, then where the rows went."""
    return episodes_shown("DiffewS", result)


def trend_markdown(table, dataset: str, fold: int, shots: int, last: int = 20) -> str:
    """Return markdown comparing DiffewS's rows of one (dataset, fold, shots) over time, per setting, newest last."""
    return episode_trend(table, "diffews", "DiffewS", dataset, fold, shots, last)
