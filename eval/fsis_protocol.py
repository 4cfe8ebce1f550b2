"""Few-shot instance segmentation protocol (TFA): balanced K-shot instance sets per data seed, base/novel splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.seeds import rng_for

#: TFA's data seeds: the official split (0) and seeds 1-9.
DATA_SEEDS = tuple(range(10))


class FsisError(ValueError):
    """A K-shot set that cannot be drawn: names the class, split, K and what is available."""


@dataclass(frozen=True)
class ShotInstance:
    """One K-shot instance: the image it is in and its index in that record's `instances`."""

    image_id: str
    index: int


def kshot_instances(
    dataset: SegDataset, split: str, classes: Sequence[int], shots: int, data_seed: int
) -> dict[int, list[ShotInstance]]:
    """Return TFA's balanced K-shot set: per class, `shots` non-crowd instances of `split`.

    Per class, the images with a pixel of it are visited in an order shuffled by (dataset, class, K, data seed), and
    their non-crowd instances of the class are taken (in record order) until K are reached, as TFA's few-shot split
    files keep an image's annotations of the class. Crowd regions are never K-shot instances. A class with fewer
    than K non-crowd instances in the split is an FsisError naming it and the count found.
    """
    if shots < 1:
        raise FsisError(f"K-shot set: shots must be >= 1, got {shots}")
    index = dataset.class_index(split)
    out: dict[int, list[ShotInstance]] = {}
    for cid in sorted(set(int(c) for c in classes)):
        images = list(index.get(cid, ()))
        order = rng_for("tfa-kshot", dataset.name, cid, shots, data_seed).permutation(len(images))
        chosen: list[ShotInstance] = []
        for i in order:
            image_id = images[int(i)]
            for j, inst in enumerate(dataset.load_instances(image_id)):
                if inst.class_id == cid and not inst.iscrowd and len(chosen) < shots:
                    chosen.append(ShotInstance(image_id, j))
            if len(chosen) == shots:
                break
        if len(chosen) < shots:
            raise FsisError(
                f"{dataset.name} split {split}: class {cid} has {len(chosen)} non-crowd instance(s); a {shots}-shot "
                "set needs that many (lower finetune.shots, or add synthetic instances)"
            )
        out[cid] = chosen
    return out
