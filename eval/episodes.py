"""Episode protocols: deterministic K-shot support sampling and the GFSS base set D^B of a fold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from maskforge.eval.seeds import rng_for


class EpisodeError(ValueError):
    """A support set or base set cannot be built as asked (the message names the class, split or count)."""


def sample_shots(
    class_index: Mapping[int, list[str]], dataset: str, fold: int, class_id: int, k: int, seed: int
) -> list[str]:
    """Pick K distinct support images of a class, deterministic from (dataset, fold, class, K, seed).

    Candidates are the images with at least one pixel of the class, in sorted order, so the choice does not
    depend on file-system listing order. Fewer than K candidates is an error, never a silent smaller K.
    """
    if class_id not in class_index:
        raise EpisodeError(f"{dataset} fold {fold}: class id {class_id} is not in the class index")
    candidates = sorted(class_index[class_id])
    if len(candidates) < k:
        raise EpisodeError(
            f"{dataset} fold {fold}: class {class_id} has {len(candidates)} image(s) with foreground, "
            f"fewer than the K={k} shots asked for"
        )
    rng = rng_for("shots", dataset, fold, class_id, k, seed)
    picks = rng.choice(len(candidates), size=k, replace=False)
    return [candidates[i] for i in sorted(int(p) for p in picks)]


def base_set(all_ids: Iterable[str], class_index: Mapping[int, list[str]], novel: Iterable[int]) -> list[str]:
    """Return D^B: the split's images with no pixel of any novel class (GFSS protocol), sorted."""
    novel_images = set()
    for cid in novel:
        novel_images.update(class_index.get(cid, ()))
    return sorted(set(all_ids) - novel_images)


def balanced_base_subset(
    base_ids: Iterable[str],
    class_index: Mapping[int, list[str]],
    base_classes: Iterable[int],
    size: int,
    dataset: str,
    fold: int,
    seed: int,
) -> list[str]:
    """Pick up to `size` base images class-balanced: round-robin over base classes, a fresh random image each turn.

    Each base class contributes about size / n_classes images (rare classes contribute all they have, and
    the others fill the remainder). Images with no base class at all are not picked. Deterministic from
    (dataset, fold, seed). Returns sorted ids.
    """
    allowed = set(base_ids)
    rng = rng_for("base-subset", dataset, fold, seed)
    queues = []
    for cid in sorted(base_classes):
        pool = sorted(set(class_index.get(cid, ())) & allowed)
        queues.append([pool[i] for i in rng.permutation(len(pool))])
    chosen: set[str] = set()
    while len(chosen) < size and any(queues):
        for queue in queues:
            while queue and queue[-1] in chosen:  # an image can hold several base classes: skip repeats
                queue.pop()
            if queue and len(chosen) < size:
                chosen.add(queue.pop())
    if not chosen:
        raise EpisodeError(f"{dataset} fold {fold}: the base set holds no image of any base class")
    return sorted(chosen)
