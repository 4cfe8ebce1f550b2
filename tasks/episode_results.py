"""Shared by the episodic learners (HSNet, DiffewS): trivial baselines, benchmark rows and the trend artifact."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import numpy as np
import torch

from maskforge.eval.datasets import open_dataset
from maskforge.eval.datasets.base import check_split
from maskforge.eval.datasets.config import DatasetConfig
from maskforge.eval.episode_data import EpisodeImages, binary_target, synthetic_keys
from maskforge.eval.folds import get_fold
from maskforge.eval.hsnet_episodes import Episode, eval_episodes
from maskforge.eval.metrics import IoUAccumulator
from maskforge.eval.seeds import rng_for
from maskforge.models.hsnet.segmenter import vote_masks
from maskforge.storage.reader import RunReader
from maskforge.storage.results import HSNET_PROTOCOL, code_version, row_metric, rows_as_dicts
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks import charts
from maskforge.tasks.charts import percent
from maskforge.tasks.learner import Record, Shown, table_of
from maskforge.tasks.progress import eta

#: The trivial baselines every episodic evaluation reports beside its settings.
BASELINES = ("all-background", "support-prior")


def prior_mask(support_masks: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Support-mask prior baseline: each support mask resized (nearest) to the query size, combined by HSNet's vote."""
    resized = []
    for mask in support_masks:
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        resized.append(torch.nn.functional.interpolate(t, size, mode="nearest")[0, 0] > 0.5)
    return vote_masks(torch.stack(resized)[:, None])[0].numpy()


def open_episodes(dataset_config: DatasetConfig, split: str, n_episodes: int, shots: int, seed: int):
    """Return (dataset, fold, evaluation episodes) of an episodic evaluation: HSNet's episodes on the fold's novel
    classes of `split` (FSS-1000: one per image); an unknown split is an error naming eval.split."""
    dataset = open_dataset(dataset_config)
    fold = get_fold(dataset.name, dataset_config.fold, dataset_config.coco_fold_mode)
    check_split(dataset, split, "eval.split")
    per_image = dataset.name == "fss"
    index = dataset.class_index(split)
    episodes = eval_episodes(index, fold.novel, n_episodes, shots, seed, dataset.name, fold.index, per_image=per_image)
    return dataset, fold, episodes


def score_episodes(
    episodes: Sequence[Episode],
    images: EpisodeImages,
    classes: Sequence[int],
    settings: Sequence[str],
    predict: Callable[[Episode, np.ndarray, tuple[int, int], list[tuple[np.ndarray, np.ndarray]]], dict],
    log: Callable[[str], None],
) -> dict:
    """Run an episodic evaluation: per episode, load the query and its (image, class mask) supports, call
    predict(episode, query image, query size, supports) -> {setting: boolean mask}, and accumulate each setting's
    IoUs and the trivial baselines; progress of the first setting (done/total, ETA) about ten times, at most
    every 200 episodes. Returns {"settings" (setting:
    IoUAccumulator summary), "baselines", "seconds"}."""
    acc = {name: IoUAccumulator(classes) for name in settings}
    baselines = Baselines(classes)
    first = settings[0]
    start = time.perf_counter()
    every = max(1, min(200, -(-len(episodes) // 10)))  # about ten lines, at most 200 episodes apart
    for n, ep in enumerate(episodes, 1):
        q_image, q_label = images.get(ep.query_id)
        target = binary_target(q_label, ep.class_id)
        pairs = [(img, lab == ep.class_id) for img, lab in map(images.get, ep.support_ids)]
        for name, pred in predict(ep, q_image, target.shape, pairs).items():
            acc[name].add(ep.class_id, pred, target)
        baselines.add(ep.class_id, [m for _, m in pairs], target)
        if n % every == 0 or n == len(episodes):
            elapsed = time.perf_counter() - start
            done = f"({elapsed:.1f} s, {eta(n, len(episodes), elapsed)})"
            log(f"episode {n}/{len(episodes)}: {first} mIoU {acc[first].miou():.4f} {done}")
    return {
        "settings": {name: a.summary() for name, a in acc.items()},
        "baselines": baselines.summary(),
        "seconds": round(time.perf_counter() - start, 2),
    }


def choose_synthetic(run: RunReader, classes, per_class: int, seed: int, source: str) -> dict[int, list[str]]:
    """Return {class: sorted keys of `per_class` of the run's generated samples}, drawn without replacement, seeded by
    (class, seed) the same way for every learner; a class with fewer is an error naming the run (`source`).

    Copy-paste scenes of the generation run's real shots are not synthetic supports (see synthetic_keys): they
    would add real images of the novel class to the episode's K shots.
    """
    chosen = {}
    for cid, class_keys in synthetic_keys(run, classes, generated_only=True).items():
        if len(class_keys) < per_class:
            raise ConfigError(
                f"eval.synthetic_per_class: run {source} holds {len(class_keys)} generated sample(s) of class {cid} "
                f"('real'-source copy-paste scenes excluded), fewer than the {per_class} asked for"
            )
        rng = rng_for("hsnet-eval-synthetic", cid, seed)
        chosen[cid] = sorted(class_keys[int(i)] for i in rng.choice(len(class_keys), per_class, replace=False))
    return chosen


class Baselines:
    """Accumulates the trivial baselines (all-background, support-mask prior) over a fold's episodes."""

    def __init__(self, classes) -> None:
        """Track the fold's novel classes."""
        self.acc = {name: IoUAccumulator(classes) for name in BASELINES}

    def add(self, class_id: int, support_masks: list[np.ndarray], target: np.ndarray) -> None:
        """Score one episode's baselines against its binary target."""
        self.acc["all-background"].add(class_id, np.zeros(target.shape, bool), target)
        self.acc["support-prior"].add(class_id, prior_mask(support_masks, target.shape), target)

    def summary(self) -> dict:
        """Return {baseline: IoUAccumulator summary}."""
        return {name: a.summary() for name, a in self.acc.items()}


def episode_rows(model: str, config_hash: str, result: dict) -> list[dict]:
    """Return the benchmark-table rows of an episodic evaluation: one per setting (KR, and KR+NS with synthetic
    supports). Protocol "fss-episodes", evaluated = the episode count, one run, metrics {"miou", "fb_iou"}."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    version_text = code_version()
    rows = []
    for setting, summary in result["settings"].items():
        synthetic = "+" in setting
        rows.append(
            {
                "created_at": created,
                "model": model,
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


def checkpoint_label(path: str) -> str:
    """Return a checkpoint's short name for tables: its file name, or parent/name for a folder with a generic name
    (a DiffewS checkpoint folder is always RUN/diffews)."""
    parts = path.rstrip("/").rsplit("/", 2)
    return "/".join(parts[-2:]) if parts[-1] in ("diffews", "unet") and len(parts) > 1 else parts[-1]


def episode_trend(table, model: str, title: str, dataset: str, fold: int, shots: int, last: int = 20) -> str:
    """Return markdown comparing one model's episodic rows of one (dataset, fold, shots) over time, per setting,
    newest last: mIoU and FB-IoU in %, and the change of mIoU from the previous run of the same setting. Rows of
    other models or protocols in the same table are left out."""
    rows = [
        r
        for r in rows_as_dicts(table)
        if r["protocol"] == HSNET_PROTOCOL
        and r["model"] == model
        and (r["dataset"], r["fold"], r["shots"]) == (dataset, fold, shots)
    ]
    columns = [
        ("backbone", lambda r: r["backbone"]),
        ("checkpoint", lambda r: checkpoint_label(r["checkpoint"])),
        ("mIoU", percent("miou")),
        ("FB-IoU", percent("fb_iou")),
    ]
    return charts.trend_markdown(rows, title, f"{dataset} fold {fold}, {shots}-shot", "miou", "mIoU", columns, last)


def artifact_table(rows: list[dict], baselines: dict) -> list[dict]:
    """Return the Prefect table artifact of an episodic evaluation: its rows (scores in %) and the baselines."""
    scores = ("miou", "fb_iou")
    table = [
        {
            **{k: v for k, v in row.items() if k not in ("metrics", "class_iou")},
            **{name: round(row_metric(row, name) * 100, 2) for name in scores},
        }
        for row in rows
    ]
    return table + [
        {"setting": f"baseline: {name}", "miou": round(s["miou"] * 100, 2), "fb_iou": round(s["fb_iou"] * 100, 2)}
        for name, s in baselines.items()
    ]


def episode_record(model: str, title: str, config_hash: str, result: dict, trend: Callable[..., str]) -> Record:
    """What an episodic evaluation (HSNet, DiffewS) appends and publishes: a row per setting, the table artifact
    MODEL-eval-DATASET-fFOLD with the baselines, the trend artifact MODEL-trend-DATASET-fFOLD."""
    rows = episode_rows(model, config_hash, result)
    where = f"{result['dataset']}-f{result['fold']}"
    return Record(
        rows=rows,
        table_key=f"{model}-eval-{where}",
        table=artifact_table(rows, result["baselines"]),
        about=f"{title} evaluation (mIoU / FB-IoU in %), {result['episodes']} episodes",
        trend_key=f"{model}-trend-{where}",
        trend=trend,
    )


def episode_log(result: dict) -> str:
    """The lines an episodic evaluation flow logs: mIoU and FB-IoU of each setting, in %."""
    return "\n".join(
        f"{name}: mIoU {100 * s['miou']:.2f}  FB-IoU {100 * s['fb_iou']:.2f}" for name, s in result["settings"].items()
    )


def episodes_shown(model: str, result: dict) -> Shown:
    """What an episodic evaluation command prints: a row per setting and baseline (mIoU, FB-IoU in %), then where
    the rows went."""
    title = f"{model} on {result['dataset']} fold {result['fold']}: {result['episodes']} episodes"
    pairs = list(result["settings"].items()) + [(f"baseline: {k}", v) for k, v in result["baselines"].items()]
    rows = [
        {"setting": name, "mIoU %": f"{100 * s['miou']:.2f}", "FB-IoU %": f"{100 * s['fb_iou']:.2f}"}
        for name, s in pairs
    ]
    return table_of(title, rows, f"benchmark rows: {result['table_file']}")
