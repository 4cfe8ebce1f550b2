"""Training feeds of the GFSS stages: augmented base-set items, and the novel stage's items streamed from shards."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maskforge.eval.datasets import open_dataset
from maskforge.eval.datasets.config import DatasetConfig
from maskforge.eval.gfss_protocol import ClassMap
from maskforge.eval.seeds import derive_seed
from maskforge.models.hsnet.backbone import IMAGENET_MEAN, IMAGENET_STD
from maskforge.storage.codec import ShardSample
from maskforge.storage.labels import IGNORE
from maskforge.storage.reader import RunReader
from maskforge.tasks.gfss.copy_paste import cut_object, plan_sample, synthesize

#: Padding colour of scale-crops (ImageNet's mean in uint8): zero after normalisation.
PAD_RGB = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)


def normalize(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """Return (N, 3, H, W) float32: uint8 RGB (N, H, W, 3) -> [0, 1] -> ImageNet mean/std."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def scale_crop_flip(
    image: np.ndarray, label: np.ndarray, crop: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """GAPS's train augmentation: rescale by U(scale), pad to the crop (label IGNORE), random crop, h-flip 0.5."""
    s = float(rng.uniform(*scale))
    h, w = label.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label.astype(np.int32)).resize((nw, nh), Image.NEAREST))
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        canvas = np.empty((nh + ph, nw + pw, 3), np.uint8)
        canvas[:] = PAD_RGB
        canvas[:nh, :nw] = img
        padded = np.full((nh + ph, nw + pw), IGNORE, np.int32)
        padded[:nh, :nw] = lab
        img, lab = canvas, padded
    top = int(rng.integers(0, img.shape[0] - crop + 1))
    left = int(rng.integers(0, img.shape[1] - crop + 1))
    img, lab = img[top : top + crop, left : left + crop], lab[top : top + crop, left : left + crop]
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def worker_seed(seed: int, *parts: object) -> int:
    """Seed of this DataLoader worker's stream (the main process counts as worker -1)."""
    info = get_worker_info()
    return derive_seed("gfss-feed", seed, *parts, -1 if info is None else info.id)


def _item(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Return one training pair: normalised (3, H, W) image and int64 (H, W) label (-1 ignore)."""
    return normalize([image])[0], torch.from_numpy(label.astype(np.int64))


class BaseFeed(IterableDataset):
    """Endless augmented items of the base set, labels in the base model's ids (bg 0, base 1..n, ignore -1)."""

    def __init__(
        self,
        dataset: DatasetConfig,
        image_ids: Sequence[str],
        class_map: ClassMap,
        fold_novel: Sequence[int],
        crop: int,
        scale: tuple[float, float],
        seed: int,
        epoch_items: int = 0,
    ) -> None:
        """Items of `image_ids` of the dataset; every worker has its own seeded stream.

        epoch_items 0: images drawn uniformly with replacement. epoch_items N: epochs as GAPS's shuffled, drop-last
        DataLoader: a fresh permutation of the images per epoch, its first N items (N = batches x batch size),
        split among the DataLoader workers (worker k takes every k-th item; exact epochs with 0 or 1 worker).
        """
        super().__init__()
        if not image_ids:
            raise ValueError(
                f"{dataset.name} fold {dataset.fold}: the base set is empty (every image holds a novel class)"
            )
        if not 0 <= epoch_items <= len(image_ids):
            raise ValueError(f"BaseFeed: epoch_items must be in 0..{len(image_ids)}, got {epoch_items}")
        self.dataset, self.image_ids, self.class_map = dataset, list(image_ids), class_map
        self.fold_novel, self.crop, self.scale, self.seed = tuple(fold_novel), crop, scale, seed
        self.epoch_items = epoch_items

    def _order(self, rng: np.random.Generator) -> Iterator[int]:
        """Endless image indices: uniform draws, or per-epoch permutations cut to epoch_items, this worker's share."""
        if not self.epoch_items:
            while True:
                yield int(rng.integers(len(self.image_ids)))
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # every worker draws the same permutations (one seed) and keeps its own share of each
        perm_rng = np.random.default_rng(derive_seed("gfss-base-epochs", self.seed))
        while True:
            yield from perm_rng.permutation(len(self.image_ids))[: self.epoch_items][worker::workers].tolist()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (image, label) pairs forever."""
        rng = np.random.default_rng(worker_seed(self.seed, "base"))
        data = open_dataset(self.dataset)
        for index in self._order(rng):
            record = data.load(self.image_ids[index])
            label = self.class_map.to_model(record.label, self.fold_novel)
            yield _item(*scale_crop_flip(record.image, label, self.crop, self.scale, rng))


@dataclass
class NovelData:
    """Everything a novel-stage worker needs to make items (plain data, so it pickles to DataLoader workers)."""

    dataset: DatasetConfig
    fold_novel: tuple[int, ...]
    class_map: ClassMap
    step_classes: tuple[int, ...]
    method: str
    #: {novel class seen so far: real shot image ids}
    shots: dict[int, list[str]]
    crop: int
    scale: tuple[float, float]
    paste_scale: tuple[float, float]
    seed: int
    #: probability that a sample (shot-only) or pasted object (gaps, finetune) of a class comes from the synthetic runs
    synthetic_share: float = 0.0
    #: {run url: sample keys of the step's classes}
    synthetic: dict[str, list[str]] = field(default_factory=dict)
    buffer: list[str] = field(default_factory=list)
    context_sets: dict[int, np.ndarray] = field(default_factory=dict)
    p_vrfs: float = 0.0
    context_prob: float = 0.9


class _SyntheticQueues:
    """Per-class queues of decoded synthetic samples, refilled from an endless shuffled shard stream."""

    def __init__(self, data: NovelData, seed: int, depth: int = 16) -> None:
        streams = []
        for url, keys in data.synthetic.items():
            reader = RunReader(url, verify=False)  # verified once by the stage before the workers start
            streams.append(iter(reader.webdataset(shuffle=64, seed=seed, resample=True, keys=keys)))
        self.streams, self.turn = streams, 0
        self.queues: dict[int, deque[ShardSample]] = {c: deque(maxlen=depth) for c in data.step_classes}

    def next(self, class_id: int) -> ShardSample:
        """Return the next streamed sample of a class (pulling from the runs in turn until one arrives)."""
        queue = self.queues[class_id]
        while not queue:
            sample = next(self.streams[self.turn % len(self.streams)])
            self.turn += 1
            cid = int(sample.meta["class_id"])
            if cid in self.queues:
                self.queues[cid].append(sample)
        return queue.popleft()


class NovelFeed(IterableDataset):
    """Endless training items of one incremental step: copy-paste onto base images (gaps; finetune, AlignDiff's
    D.3 reading, whose buffer is random and context_prob 0) or the shots alone (shot-only)."""

    def __init__(self, data: NovelData) -> None:
        """Hold the step's plain description; decoding, streaming and synthesis happen in the iterating worker."""
        super().__init__()
        self.data = data

    @staticmethod
    def _real_label(label: np.ndarray, class_id: int, model_id: int) -> np.ndarray:
        """A real shot's annotation: its class as `model_id`, every other pixel background, ignore kept."""
        out = np.where(label == class_id, model_id, 0).astype(np.int32)
        out[label == IGNORE] = IGNORE
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (image, label) pairs forever, seeded per worker."""
        d = self.data
        seed = worker_seed(d.seed, "novel")
        rng = np.random.default_rng(seed)
        dataset = open_dataset(d.dataset)
        synthetic = _SyntheticQueues(d, seed) if d.synthetic else None
        real = {c: [dataset.load(i) for i in ids] for c, ids in d.shots.items()}
        ids = d.class_map.model_ids()
        if d.method == "shot-only":  # the real shots alone (or whole synthetic samples), no base image
            while True:
                cid = d.step_classes[int(rng.integers(len(d.step_classes)))]
                if synthetic is not None and rng.random() < d.synthetic_share:
                    s = synthetic.next(cid)
                    image, label = s.image, d.class_map.to_model(s.label, d.fold_novel)
                else:
                    r = real[cid][int(rng.integers(len(real[cid])))]
                    image, label = r.image, self._real_label(r.label, cid, ids[cid])
                yield _item(*scale_crop_flip(image, label, d.crop, d.scale, rng))
        pools = {c: [cut_object(r.image, r.label, c, "real", r.image_id) for r in rs] for c, rs in real.items()}
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        while True:
            plan_pools = dict(pools)
            if synthetic is not None:
                for c in d.step_classes:  # each selected instance is synthetic with probability synthetic_share
                    if rng.random() < d.synthetic_share:
                        s = synthetic.next(c)
                        plan_pools[c] = [cut_object(s.image, s.label, c, "synthetic", s.key)]
            plan = plan_sample(rng, d.step_classes, plan_pools, len(d.buffer), d.context_sets, d.p_vrfs, d.context_prob)
            if plan.base_index not in cache:
                if len(cache) >= 256:
                    cache.pop(next(iter(cache)))
                record = dataset.load(d.buffer[plan.base_index])
                cache[plan.base_index] = (record.image, d.class_map.to_model(record.label, d.fold_novel))
            base_image, base_label = scale_crop_flip(*cache[plan.base_index], d.crop, d.scale, rng)
            image, label = synthesize(plan, base_image, base_label, plan_pools, rng, d.paste_scale, ids.__getitem__)
            yield _item(image, label)


def leave_signals_to_the_parent(worker_id: int) -> None:
    """DataLoader worker_init_fn: move the worker out of the command's process group. Ctrl-C (or `kill -TERM -PGID`)
    reaches the whole group; a worker that died of it first made the parent fail with "DataLoader worker is killed by
    signal" instead of ending on the signal itself (exit 130 / 143). Out of the group, the worker is stopped by its
    parent as the parent unwinds or exits (multiprocessing's exit hook), or stops by itself within seconds of the
    parent's death (torch's manager watchdog)."""
    os.setpgrp()


def drop_inherited_thread_exit_hooks() -> list:
    """Remove the thread-exit hooks a forked worker inherited from an orchestrating parent; return them.

    Prefect's queue services (the API log and event workers) register `threading._register_atexit(self._at_exit)`
    in the parent (prefect/_internal/concurrency/services.py:127). After fork Prefect resets the services in the
    child (services.py:31-41) but the hook stays, so when the worker ends `threading._shutdown()` calls `drain()` on
    a reset service, whose `assert self._done_event is not None` (services.py:245) fails: exit code 1 with no
    traceback, which torch's SIGCHLD handler reports as "DataLoader worker (pid N) exited unexpectedly". Every GFSS
    stage run under a Prefect flow with data workers hit it, at its end or at the command's exit. The worker has none
    of the parent's threads, so none of their exit hooks may run in it; `_threading_atexits` is CPython's list of
    them (private, hence the guard)."""
    hooks = getattr(threading, "_threading_atexits", None)
    if not isinstance(hooks, list):
        return []

    def owner(hook) -> str:
        """The module of the object a hook is a method of (threading wraps each hook in a functools.partial)."""
        func = getattr(hook, "func", hook)
        return type(getattr(func, "__self__", None)).__module__

    dropped = [hook for hook in hooks if owner(hook).startswith("prefect.")]
    for hook in dropped:
        hooks.remove(hook)
    return dropped


def start_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn of the GFSS feeds: leave the command's process group, drop the parent's thread-exit
    hooks (see both)."""
    leave_signals_to_the_parent(worker_id)
    drop_inherited_thread_exit_hooks()


@contextlib.contextmanager
def make_loader(feed: IterableDataset, batch_size: int, workers: int, pin: bool = False) -> Iterator[Iterator]:
    """A context giving an endless batch iterator over a feed (DataLoader worker processes decode and synthesise),
    whose workers are stopped when the context ends, by an error included.

    An iterator left to the garbage collector kept its workers as long as something held it: a stage's exception
    holds the stage's frame in its traceback, and Prefect keeps the exception in the failed task's state, so the
    workers lived on until interpreter exit. Each worker starts with start_worker, without which a worker forked
    under Prefect ended with exit code 1 (drop_inherited_thread_exit_hooks).
    """
    # pinning and prefetching only mean something with worker processes
    more = {"pin_memory": pin, "persistent_workers": False, "prefetch_factor": 4} if workers else {}
    if workers:
        more["worker_init_fn"] = start_worker
    batches = iter(DataLoader(feed, batch_size=batch_size, num_workers=workers, **more))
    try:
        yield batches
    finally:
        # torch's iterator has no public close; _shutdown_workers is what its own __del__ calls (idempotent)
        stop = getattr(batches, "_shutdown_workers", None)
        if stop is not None:
            stop()
