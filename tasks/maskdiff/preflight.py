"""Pre-flight checks of the MaskDiff stages: every fault that the config and the files on disk decide, in seconds.

`maskforge maskdiff train|eval` runs them before Prefect starts (one `error:` line, no server, no flow run), the
flows run them as their first task (deployments skip the CLI), and the stages run them first too: one source of
truth. Nothing here builds a network, hashes a checkpoint or decodes images: it reads markers, indexes and manifests.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from maskforge.eval.datasets import open_dataset
from maskforge.eval.datasets.base import SegDataset, check_split
from maskforge.eval.datasets.coco_tfa import TfaCocoDataset, read_minival_ids
from maskforge.eval.datasets.coco_voc import VocInCocoDataset
from maskforge.eval.folds import Fold, class_split
from maskforge.eval.fsis_protocol import (
    ShotInstance,
    kshot_instances,
    read_tfa_kshot,
    tfa_files_present,
    tfa_seed_file,
)
from maskforge.models.device import resolve_device
from maskforge.storage.fs import check_output_location, exists, is_local, join, resolve
from maskforge.storage.marked_folder import COMPLETE, MarkedFolderError, read_marked_folder
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff.config import VOC_SPLIT, MaskdiffConfig
from maskforge.tasks.maskdiff.synthetic import FIELD as SYNTHETIC_FIELD
from maskforge.tasks.maskdiff.synthetic import require_generated
from maskforge.tasks.synthetic_runs import open_synthetic_run

#: Files of a K-shot stage folder the evaluation reads; each must be listed with its sha256 in COMPLETE.json.
DETECTOR_FILE, HEAD_FILE, KSHOT_FILE = "detector.safetensors", "mask_head.safetensors", "kshot.json"


def open_fold(config: MaskdiffConfig, split: str, field: str) -> tuple[SegDataset, Fold]:
    """Return the configured dataset and class split (config.split: a COCO-20i / toy fold, or TFA's split over
    TFA's image lists, eval/datasets/coco_tfa.py); an unknown split is a ConfigError naming `field`. eval.split
    voc2012-val is VOC2012's val instances in COCO's class ids (eval/datasets/coco_voc.py), for COCO -> VOC."""
    fold = class_split(config.dataset.name, config.dataset.fold, config.dataset.coco_fold_mode, config.split)
    if split == VOC_SPLIT:
        return VocInCocoDataset(config.eval.voc_root), fold
    dataset = open_dataset(config.dataset)
    if config.split == "tfa":
        dataset = _tfa_dataset(dataset, config.dataset.root, config.tfa.minival)
    check_split(dataset, split, field)
    return dataset, fold


@lru_cache(maxsize=2)
def _tfa_dataset(coco: SegDataset, root: str, minival: str) -> TfaCocoDataset:
    """TFA's image lists over the opened COCO 2014 dataset, built once per process (the minival file is read once)."""
    return TfaCocoDataset(coco, read_minival_ids(root, minival), minival)


def kshot_set(config: MaskdiffConfig, dataset: SegDataset, fold: Fold) -> dict[int, list[ShotInstance]]:
    """Return the K-shot set of every class of the split in base.split: TFA's seed files when config.kshot_source()
    says so (split tfa), else maskforge's balanced draw (eval/fsis_protocol.py:kshot_instances, which visits only
    the images it takes); a class with fewer than finetune.shots non-crowd instances is an FsisError naming it."""
    f = config.finetune
    classes = sorted(fold.base + fold.novel)
    if config.kshot_source() == "tfa-files":
        names = {cid: dataset.classes()[cid] for cid in classes}
        seed_dir = config.seed_dir()
        if not tfa_files_present(seed_dir, names, f.shots, f.data_seed):
            raise ConfigError(
                f"tfa.kshot: tfa-files, but TFA's {f.shots}-shot seed files of data seed {f.data_seed} are not in "
                f"{seed_dir} (e.g. {tfa_seed_file(seed_dir, f.shots, f.data_seed, names[classes[0]])}); copy TFA's "
                "cocosplit/ there or set tfa.kshot: auto"
            )
        return read_tfa_kshot(dataset, seed_dir, names, f.shots, f.data_seed, config.base.split)
    return kshot_instances(dataset, config.base.split, classes, f.shots, f.data_seed)


def check_base_inputs(config: MaskdiffConfig) -> tuple[SegDataset, Fold] | None:
    """Check what train_maskdiff_base needs; return (dataset, fold), or None when the base stage is complete.

    Checks, in order: run.out_dir writable, run.device available, detector.weights given for the resnet50 backbone
    and a file on disk, base.split a split of the dataset, and the K-shot set the K-shot stage will need (a split
    that cannot give it fails before base training).
    """
    if exists(join(config.base_dir(), COMPLETE)):
        return None
    check_output_location(config.run.out_dir, field="run.out_dir")
    resolve_device(config.run.device)
    d = config.detector
    if d.backbone != "tiny" and not d.weights:
        raise ConfigError(
            f"detector.weights is required to train backbone {d.backbone!r}: a local torchvision "
            "ResNet-50 ImageNet state dict (e.g. resnet50-0676ba61.pth); nothing is downloaded"
        )
    if d.weights and not Path(d.weights).expanduser().is_file():
        raise ConfigError(
            f"detector.weights: backbone weights file {d.weights!r} not found; expected a local torchvision resnet50 "
            "state dict (.pth or .safetensors); nothing is downloaded"
        )
    dataset, fold = open_fold(config, config.base.split, "base.split")
    kshot_set(config, dataset, fold)
    return dataset, fold


def check_synthetic_runs(config: MaskdiffConfig, classes: list[int]) -> list[RunReader]:
    """Open every finetune.synthetic_runs run (complete, of this dataset and fold: tasks/synthetic_runs.py), each
    holding generated samples of `classes` (the fold's novel classes); return the readers."""
    readers = []
    for url in config.finetune.synthetic_runs:
        reader = open_synthetic_run(url, SYNTHETIC_FIELD, config.dataset, fold=True)
        require_generated(reader, url, classes)
        readers.append(reader)
    return readers


def check_finetune_inputs(
    config: MaskdiffConfig, base_first: bool = False
) -> tuple[SegDataset, Fold, dict[int, list[ShotInstance]]] | None:
    """Check what train_maskdiff_finetune needs; return (dataset, fold, K-shot set), or None when the K-shot stage
    is complete.

    Checks, in order: run.out_dir writable, run.device available, base.split a split of the dataset, its K-shot set
    (finetune.shots instances of every class), the base stage complete ("train the base stage first"; skipped with
    `base_first`: the caller trains it before), and every finetune.synthetic_runs run complete, of this dataset and
    fold, with generated samples of the novel classes.
    """
    if exists(join(config.finetune_dir(), COMPLETE)):
        return None
    check_output_location(config.run.out_dir, field="run.out_dir")
    resolve_device(config.run.device)
    dataset, fold = open_fold(config, config.base.split, "base.split")
    shots = kshot_set(config, dataset, fold)
    base_dir = config.base_dir()
    if not base_first and not exists(join(base_dir, COMPLETE)):
        raise ConfigError(f"{base_dir}: no {COMPLETE}; train the base stage first (train_maskdiff_base)")
    check_synthetic_runs(config, sorted(fold.novel))
    return dataset, fold, shots


def check_train_inputs(config: MaskdiffConfig) -> None:
    """Check what train_maskdiff (base stage, then K-shot stage) needs: check_base_inputs, then
    check_finetune_inputs with the base stage trained first. A complete stage is reused, so it is not checked."""
    check_base_inputs(config)
    check_finetune_inputs(config, base_first=True)


def require_finetune_dir(folder: str) -> dict:
    """Return the COMPLETE.json of a K-shot stage folder, checked to be local, complete and to list the detector,
    mask head and kshot.json (the sha256 of each is checked when evaluation loads them: hashing is not pre-flight)."""
    if not is_local(resolve(folder)[0]):
        raise ConfigError(
            f"{folder}: the stage folder is not on the local disk; evaluation loads its checkpoints locally"
        )
    if not (Path(folder) / COMPLETE).is_file():
        raise ConfigError(
            f"{folder}: no {COMPLETE}; the K-shot stage of this config has not completed -- train first "
            "(`maskforge maskdiff train CONFIG`)"
        )
    try:
        return read_marked_folder(folder, (DETECTOR_FILE, HEAD_FILE, KSHOT_FILE), verify=False)
    except MarkedFolderError as err:
        raise ConfigError(str(err)) from None


def check_eval_inputs(config: MaskdiffConfig) -> tuple[SegDataset, Fold]:
    """Check what eval_maskdiff needs; return (dataset, fold).

    Checks, in order: eval.results_dir writable, run.device available, the K-shot stage folder of this config
    local and complete with its detector, mask head and kshot.json listed ("train first"), and eval.split a split
    of the dataset.
    """
    check_output_location(config.eval.results_dir, field="eval.results_dir")
    resolve_device(config.run.device)
    require_finetune_dir(config.finetune_dir())
    return open_fold(config, config.eval.split, "eval.split")
