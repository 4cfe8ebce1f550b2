"""Pre-flight checks of the GFSS stages (base, novel, evaluation): every fault the config and the files on disk decide,
found in seconds, before a network is built.

`maskforge gfss train-base|train-novel|eval` runs them before Prefect starts (one `error:` line, no server, no flow
run), the flows run them as their first task (deployments skip the CLI), and the stages run them first too: one
source of truth. They open class indexes, markers and file headers; they decode no image and hash no shard (the
novel stage hashes its synthetic runs' shards when it starts, tasks/gfss/novel.py:open_synthetic).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maskforge.eval.datasets import open_dataset
from maskforge.eval.datasets.base import SegDataset, check_split
from maskforge.eval.episode_data import synthetic_keys
from maskforge.eval.folds import Fold, get_fold
from maskforge.eval.gfss_protocol import novel_only_candidates
from maskforge.models.device import resolve_device
from maskforge.storage.fs import check_output_location, exists, file_problem, join
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.gfss.config import GfssConfig
from maskforge.tasks.synthetic_runs import open_synthetic_run

#: The file of a base stage folder that marks it trained (written last).
BASE_CHECKPOINT = "gfss-base.safetensors"
#: The file of a novel stage folder that marks it complete (written last).
NOVEL_MANIFEST = "novel.json"


@dataclass(frozen=True)
class BaseInputs:
    """What check_base_inputs opened, handed to the base stage so that nothing is opened twice."""

    dataset: SegDataset
    fold: Fold
    #: the leakage-free base set: images of base.split without a pixel of a novel class
    image_ids: list[str]


def open_fold(config: GfssConfig) -> tuple[SegDataset, Fold]:
    """Return the configured dataset and its fold table."""
    dataset = open_dataset(config.dataset)
    return dataset, get_fold(dataset.name, config.dataset.fold, config.dataset.coco_fold_mode)


def base_image_ids(dataset: SegDataset, split: str, fold: Fold) -> list[str]:
    """Return the leakage-free base set: images of the split without a single pixel of a novel class (GAPS)."""
    index = dataset.class_index(split)
    novel_images = {i for c in fold.novel for i in index.get(c, [])}
    return [i for i in dataset.image_ids(split) if i not in novel_images]


def base_schedule(config: GfssConfig, base_images: int) -> tuple[int, int]:
    """Return (steps, steps per lr update) of the base stage.

    base.steps 0 (GAPS): epochs x (base_images // batch_size) steps (the last partial batch dropped), the poly lr
    updated once per epoch; base.steps N: N steps, updated every step. Fewer base images than one batch is a
    ConfigError.
    """
    b = config.base
    if b.steps:
        return b.steps, 1
    per_epoch = base_images // b.batch_size
    if per_epoch < 1:
        raise ConfigError(
            f"base.batch_size: {b.batch_size} is more than the {base_images} base images; an epoch would have no "
            "full batch (set a smaller batch or base.steps)"
        )
    return b.epochs * per_epoch, per_epoch


def check_base_inputs(config: GfssConfig) -> BaseInputs | None:
    """Check what train_gfss_base needs; return None when the base folder is already trained (it is reused as is).

    Checks, in order: base.checkpoint unset (with it there is nothing to train), run.out_dir writable, run.device
    available, model.weights given for a ResNet backbone and a file on disk, base.split a split of the dataset, a
    base set that is not empty, and (epoch schedule) at least one full batch of it.
    """
    b, m = config.base, config.model
    if b.checkpoint:
        raise ConfigError(
            f"base.checkpoint is set ({b.checkpoint}): the novel stage starts from it; unset it to train a base model"
        )
    if exists(join(config.base_dir(), BASE_CHECKPOINT)):
        return None
    check_output_location(config.run.out_dir, field="run.out_dir")
    resolve_device(config.run.device)
    if m.backbone != "tiny" and not m.weights:
        raise ConfigError(
            f"model.weights is required to train backbone {m.backbone!r}: a local torchvision ResNet-101 ImageNet "
            "state dict (e.g. resnet101-63fe2227.pth); nothing is downloaded"
        )
    if m.weights and (problem := file_problem(Path(m.weights).expanduser())):
        raise ConfigError(
            f"model.weights: backbone weights file {m.weights!r} {problem}; expected a local torchvision ResNet-101 "
            "state dict (.pth or .safetensors); nothing is downloaded"
        )
    dataset, fold = open_fold(config)
    check_split(dataset, b.split, "base.split")
    ids = base_image_ids(dataset, b.split, fold)
    if not ids:
        raise ConfigError(
            f"base.split: every image of {dataset.name} split {b.split!r} holds a novel class of fold {fold.index}; "
            "the base set is empty"
        )
    base_schedule(config, len(ids))  # an epoch schedule needs one full batch of them
    return BaseInputs(dataset, fold, ids)


def check_base_checkpoint(config: GfssConfig) -> str:
    """Return the base checkpoint the novel stage starts from; a ConfigError when it is not a file ("train first")."""
    path = config.base_checkpoint()
    if problem := file_problem(path):
        field = "base.checkpoint" if config.base.checkpoint else "the base stage's checkpoint"
        raise ConfigError(
            f"{field}: {path!r} {problem}; train it first (maskforge gfss train-base CONFIG) or set base.checkpoint"
        )
    return path


def check_novel_inputs(config: GfssConfig, after_base: bool = False) -> bool:
    """Check what train_gfss_novel needs; return False when the novel folder is complete (it is reused as is).

    Checks, in order: run.out_dir writable, run.device available, novel.split a split of the dataset, enough
    images holding each novel class and no other novel class for novel.shots shots (GAPS's support pool), a base
    image to paste onto (gaps, finetune), novel.synthetic_runs complete runs of this dataset, fold and world with
    generated samples of every novel class, and (unless `after_base`: the base stage trains first in the same flow)
    the base checkpoint a file. The checkpoint's class count and backbone are checked when it loads (that reads its
    tensors).
    """
    n = config.novel
    if exists(join(config.novel_dir(), NOVEL_MANIFEST)):
        return False
    check_output_location(config.run.out_dir, field="run.out_dir")
    resolve_device(config.run.device)
    dataset, fold = open_fold(config)
    check_split(dataset, n.split, "novel.split")
    index = dataset.class_index(n.split)
    names = dataset.classes()
    for cid in sorted(fold.novel):
        pool = novel_only_candidates(index, fold.novel, cid) if cid in index else []
        if len(pool) < n.shots:
            raise ConfigError(
                f"novel.shots: {n.shots} shots of class {cid} ({names[cid]}) need as many images of split "
                f"{n.split!r} holding it and no other novel class of fold {fold.index}; there are {len(pool)}"
            )
    if n.method != "shot-only" and not base_image_ids(dataset, n.split, fold)[: n.buffer_images or None]:
        raise ConfigError(
            f"novel.split: {dataset.name} split {n.split!r} has no base image (all hold a novel class) for "
            f"novel.method {n.method!r} to paste onto"
        )
    for url in n.synthetic_runs:
        run = open_synthetic_run(url, "novel.synthetic_runs", config.dataset, fold=True, world=True)
        keys = synthetic_keys(run, fold.novel, generated_only=True)
        held = {c: len(k) for c, k in keys.items() if k}
        if missing := [c for c in sorted(fold.novel) if not keys.get(c)]:
            raise ConfigError(
                f"novel.synthetic_runs: {url} holds no generated sample of class {missing[0]}; it holds "
                f"{held or 'no generated sample of a novel class'} (class: samples; 'real'-source scenes excluded)"
            )
    if not after_base:
        check_base_checkpoint(config)
    return True


def check_eval_inputs(config: GfssConfig, after_novel: bool = False) -> None:
    """Check what eval_gfss needs: eval.results_dir writable, run.device available, eval.split a split of the
    dataset, and (unless `after_novel`: the novel stage runs first in the same flow) the novel stage complete."""
    check_output_location(config.eval.results_dir, field="eval.results_dir")
    resolve_device(config.run.device)
    dataset, _ = open_fold(config)
    check_split(dataset, config.eval.split, "eval.split")
    manifest = join(config.novel_dir(), NOVEL_MANIFEST)
    if not after_novel and not exists(manifest):
        raise ConfigError(
            f"{manifest} not found: the novel stage of this config has not completed; run "
            "`maskforge gfss train-novel CONFIG` first"
        )


def check_novel_eval_inputs(config: GfssConfig) -> None:
    """The pre-flight of gfss_novel_eval (novel stage, then evaluation, in one flow): both stages' inputs."""
    check_novel_inputs(config)
    check_eval_inputs(config, after_novel=True)


def check_base_novel_eval_inputs(config: GfssConfig) -> None:
    """The pre-flight of gfss_base_novel_eval (the base stage when not trained, the novel stage, evaluation: what a
    nightly chain runs with no person to train the base first): every stage's inputs before the base trains."""
    check_base_inputs(config)
    check_novel_inputs(config, after_base=True)
    check_eval_inputs(config, after_novel=True)
