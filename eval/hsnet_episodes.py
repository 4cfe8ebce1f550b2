"""HSNet episodes on a dataset fold: deterministic evaluation episodes and a seeded training-episode stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from maskforge.eval.episodes import EpisodeError
from maskforge.eval.seeds import rng_for


@dataclass(frozen=True)
class Episode:
    """One few-shot episode: a query image, the class to segment in it, and K support images of that class."""

    query_id: str
    class_id: int
    support_ids: tuple[str, ...]


def _pools(class_index: Mapping[int, list[str]], classes: Sequence[int], shots: int, what: str) -> dict[int, list[str]]:
    """Return {class: sorted image ids}; a class with fewer than shots + 1 images is an EpisodeError."""
    pools = {}
    for cid in classes:
        images = sorted(class_index.get(cid, ()))
        if len(images) < shots + 1:
            raise EpisodeError(
                f"{what}: class {cid} has {len(images)} image(s) with foreground; a {shots}-shot episode needs "
                f"at least {shots + 1} (a query and {shots} other supports)"
            )
        pools[cid] = images
    return pools


def _supports(rng: np.random.Generator, pool: list[str], query: str, shots: int) -> tuple[str, ...]:
    """Draw `shots` distinct support ids from pool, none equal to the query."""
    others = [i for i in pool if i != query]
    picks = rng.choice(len(others), size=shots, replace=False)
    return tuple(others[int(p)] for p in picks)


def eval_episodes(
    class_index: Mapping[int, list[str]],
    classes: Sequence[int],
    n_episodes: int,
    shots: int,
    seed: int,
    dataset: str,
    fold: int,
    per_image: bool = False,
) -> list[Episode]:
    """Return the fold's evaluation episodes, deterministic from (dataset, fold, shots, seed).

    Default: `n_episodes` episodes, each a class drawn uniformly, then a query image of it, then K other supports.
    `per_image` (FSS-1000): one episode per (image, class) of the classes, in sorted order; `n_episodes` is ignored.
    """
    pools = _pools(class_index, classes, shots, f"{dataset} fold {fold}")
    rng = rng_for("hsnet-eval-episodes", dataset, fold, shots, seed)
    episodes = []
    if per_image:
        for cid in sorted(pools):
            for query in pools[cid]:
                episodes.append(Episode(query, cid, _supports(rng, pools[cid], query, shots)))
        return episodes
    if n_episodes < 1:
        raise EpisodeError(f"{dataset} fold {fold}: n_episodes must be >= 1, got {n_episodes}")
    order = sorted(pools)
    for _ in range(n_episodes):
        cid = order[int(rng.integers(len(order)))]
        pool = pools[cid]
        query = pool[int(rng.integers(len(pool)))]
        episodes.append(Episode(query, cid, _supports(rng, pool, query, shots)))
    return episodes


class TrainEpisodes:
    """Seeded stream of training episodes on base classes: class uniform, query uniform, supports != query."""

    def __init__(
        self,
        class_index: Mapping[int, list[str]],
        classes: Sequence[int],
        seed: int,
        what: str,
        extra_supports: Mapping[int, list[str]] | None = None,
        max_shots: int = 1,
    ) -> None:
        """Sample from `classes` (each needs >= max_shots + 1 images); `extra_supports` (e.g. synthetic) join support
        pools only."""
        self.pools = _pools(class_index, classes, max_shots, what)
        self.max_shots = max_shots
        self.extra = {cid: sorted((extra_supports or {}).get(cid, ())) for cid in self.pools}
        self.order = sorted(self.pools)
        self.rng = rng_for("hsnet-train-episodes", what, seed)

    def next(self, shots: int = 1) -> Episode:
        """Return the next episode with `shots` (<= max_shots) supports from the class's other images and extras."""
        if not 1 <= shots <= self.max_shots:
            raise EpisodeError(f"TrainEpisodes.next: shots must be in [1, {self.max_shots}], got {shots}")
        cid = self.order[int(self.rng.integers(len(self.order)))]
        pool = self.pools[cid]
        query = pool[int(self.rng.integers(len(pool)))]
        return Episode(query, cid, _supports(self.rng, pool + self.extra[cid], query, shots))
