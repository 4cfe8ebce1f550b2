"""Few-shot instance segmentation protocol (TFA): balanced K-shot instance sets per data seed, base/novel splits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.folds import COCO_CATEGORY_IDS
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


# --- TFA's K-shot seed files ---------------------------------------------------------------------------------------

#: Where a K-shot set came from, recorded in kshot.json, the evaluation result and every benchmark row.
KSHOT_SOURCES = ("tfa-files", "maskforge-draw")


def tfa_seed_file(seed_dir: str | Path, shots: int, data_seed: int, class_name: str) -> Path:
    """Return TFA's K-shot file of a COCO class: cocosplit/full_box_{K}shot_{class}_trainval.json for data seed 0,
    cocosplit/seed{i}/... for seeds 1-9 (ucbdrive/few-shot-object-detection 148a039, fsdet/data/meta_coco.py:40-50;
    datasets/prepare_coco_few_shot.py:83-88). The class name is COCO's, spaces kept ("dining table")."""
    folder = Path(seed_dir) if data_seed == 0 else Path(seed_dir) / f"seed{data_seed}"
    return folder / f"full_box_{shots}shot_{class_name}_trainval.json"


def tfa_files_present(seed_dir: str | Path | None, names: dict[int, str], shots: int, data_seed: int) -> bool:
    """Whether TFA's K-shot files of every class in `names` are on disk: True when all are, False when none is (or
    there is no seed_dir); some but not all is an FsisError naming the first missing file (a partial copy would mix
    TFA's draw with maskforge's)."""
    if seed_dir is None or not Path(seed_dir).is_dir():
        return False
    files = {cid: tfa_seed_file(seed_dir, shots, data_seed, name) for cid, name in sorted(names.items())}
    missing = [f for f in files.values() if not f.is_file()]
    if len(missing) == len(files):
        return False
    if missing:
        raise FsisError(
            f"TFA seed files: {len(missing)} of {len(files)} {shots}-shot files of data seed {data_seed} are missing, "
            f"e.g. {missing[0]}; copy all of cocosplit/ (datasets/prepare_coco_few_shot.py writes them) or none"
        )
    return True


def read_tfa_kshot(
    dataset, seed_dir: str | Path, names: dict[int, str], shots: int, data_seed: int, split: str = "trainval35k"
) -> dict[int, list[ShotInstance]]:
    """Return the K-shot set TFA's seed files give: per class, its file's annotations in file order as
    ShotInstances of `dataset` (a TfaCocoDataset: annotation_ids, image ids of `split`).

    Each annotation must be of the file's class, in an image of `split` and a visible instance there; a file with
    fewer than K annotations is an FsisError; with more, the first K are taken (TFA draws K at random,
    fsdet/data/meta_coco.py:94-95; its prepare script writes exactly K).
    """
    allowed = set(dataset.image_ids(split))
    out: dict[int, list[ShotInstance]] = {}
    for cid, name in sorted(names.items()):
        path = tfa_seed_file(seed_dir, shots, data_seed, name)
        try:
            data = json.loads(path.read_text())
            files = {int(img["id"]): str(img["file_name"]) for img in data["images"]}
            anns = [(int(a["id"]), int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise FsisError(f"TFA seed file {path}: not a COCO instances JSON ({type(err).__name__}: {err})") from None
        chosen: list[ShotInstance] = []
        for ann_id, coco_image, category in anns[:shots]:
            if category != COCO_CATEGORY_IDS[cid - 1]:
                raise FsisError(f"TFA seed file {path}: annotation {ann_id} has category {category}, not {name!r}")
            file_name = files.get(coco_image)
            if file_name is None:
                raise FsisError(f"TFA seed file {path}: annotation {ann_id} names image {coco_image}, not listed")
            stem = Path(file_name).stem
            image_id = f"{stem.split('_')[1]}/{stem}" if stem.count("_") == 2 else stem
            if image_id not in allowed:
                raise FsisError(f"TFA seed file {path}: image {file_name} is not in {split}; expected TFA's trainval")
            ids = dataset.annotation_ids(image_id)
            if ann_id not in ids:
                raise FsisError(
                    f"TFA seed file {path}: annotation {ann_id} of {file_name} is not a visible instance there "
                    "(skipped or hidden by smaller ones)"
                )
            index = ids.index(ann_id)
            found = dataset.load_instances(image_id)[index].class_id
            if found != cid:  # the file and the instances JSON disagree: another COCO release than TFA's
                raise FsisError(
                    f"TFA seed file {path}: annotation {ann_id} of {file_name} is a class {found} instance in the "
                    f"dataset, not {name!r}; the seed files and dataset.root come from different COCO releases"
                )
            chosen.append(ShotInstance(image_id, index))
        if len(chosen) < shots:
            raise FsisError(f"TFA seed file {path}: {len(chosen)} annotation(s); a {shots}-shot set needs {shots}")
        out[cid] = chosen
    return out
