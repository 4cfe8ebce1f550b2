"""Pre-flight checks of the HSNet stages: every fault that the config and the files on disk decide, found in seconds.

`maskforge hsnet train|eval` runs them before Prefect starts (one `error:` line, no server, no flow run), the flows
run them as their first task (deployments skip the CLI), and the stages run them first too: one source of truth.
Nothing here builds a network or decodes the dataset's images: it opens indexes, markers and file headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maskforge.eval.datasets import open_dataset
from maskforge.eval.datasets.base import SegDataset, check_split
from maskforge.eval.episode_data import synthetic_keys
from maskforge.eval.folds import Fold, get_fold
from maskforge.models.device import resolve_device
from maskforge.models.hsnet.checkpoint import CheckpointError
from maskforge.storage.fs import check_output_location, exists, join
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.episode_results import choose_synthetic, open_episodes
from maskforge.tasks.hsnet.config import HsnetConfig
from maskforge.tasks.synthetic_runs import open_synthetic_run

#: The file of a training folder that marks it trained (written last).
CHECKPOINT_NAME = "hsnet.safetensors"


@dataclass(frozen=True)
class TrainInputs:
    """What check_train_inputs opened, handed to the training stage so that nothing is opened twice."""

    dataset: SegDataset
    fold: Fold
    run: RunReader | None
    #: {base class: synthetic sample keys} of train.synthetic_run ({} without one)
    synthetic: dict[int, list[str]]


def check_train_inputs(config: HsnetConfig) -> TrainInputs | None:
    """Check what train_hsnet needs; return None when the training folder is already trained (it is reused as is).

    Checks, in order: run.out_dir writable (storage/fs.py:check_output_location), run.device available,
    train.synthetic_run complete and of this dataset (tasks/synthetic_runs.py), model.weights given for a
    pretrained backbone and a file on disk, train.split a split of the dataset, and the synthetic run holding
    samples of the fold's base classes. Each fault is one ValueError/FileNotFoundError naming the field.
    """
    if exists(join(config.train_dir(), CHECKPOINT_NAME)):
        return None
    check_output_location(config.run.out_dir, field="run.out_dir")
    resolve_device(config.run.device)
    m, t = config.model, config.train
    run = open_synthetic_run(t.synthetic_run, "train.synthetic_run", config.dataset) if t.synthetic_run else None
    if m.backbone != "tiny" and not m.weights:
        raise ConfigError(
            f"model.weights is required to train with backbone {m.backbone!r}: a local torchvision state-dict file "
            "(e.g. resnet101-63fe2227.pth); nothing is downloaded"
        )
    if m.weights and not Path(m.weights).expanduser().is_file():
        raise ConfigError(
            f"model.weights: backbone weights file {m.weights!r} not found; expected a local torchvision "
            f"{m.backbone} state dict (.pth or .safetensors); nothing is downloaded"
        )
    dataset = open_dataset(config.dataset)
    fold = get_fold(dataset.name, config.dataset.fold, config.dataset.coco_fold_mode)
    check_split(dataset, t.split, "train.split")
    synthetic: dict[int, list[str]] = {}
    if run is not None:
        synthetic = synthetic_keys(run, fold.base)
        if not any(synthetic.values()):
            raise ConfigError(
                f"train.synthetic_run: {t.synthetic_run} holds no sample of a base class of {dataset.name} fold "
                f"{fold.index} (base classes {list(fold.base)})"
            )
    return TrainInputs(dataset, fold, run, synthetic)


def check_checkpoint(config: HsnetConfig) -> str:
    """Return the checkpoint evaluation reads (eval.checkpoint, else training's); a CheckpointError when absent."""
    path = config.checkpoint_path()
    if not Path(path).is_file():
        raise CheckpointError(
            f"eval.checkpoint: {path!r} not found; train first (maskforge hsnet train CONFIG) or set eval.checkpoint"
        )
    return path


def check_eval_inputs(config: HsnetConfig) -> RunReader | None:
    """Check what eval_hsnet needs; return the opened eval.synthetic_run (None without one).

    Checks, in order: eval.results_dir writable, run.device available, eval.synthetic_run complete and of this
    dataset and fold, the checkpoint present (eval.checkpoint, else the trained folder's: "train first"),
    eval.split a split of the dataset whose novel classes give eval.shots-shot episodes (its class index only),
    and the synthetic run holding eval.synthetic_per_class generated samples of every novel class. The
    checkpoint's backbone and size are checked when it loads (that reads its tensors).
    """
    e = config.eval
    check_output_location(e.results_dir, field="eval.results_dir")
    resolve_device(config.run.device)
    run = (
        open_synthetic_run(e.synthetic_run, "eval.synthetic_run", config.dataset, fold=True)
        if e.synthetic_run
        else None
    )
    check_checkpoint(config)
    _, fold, _ = open_episodes(config.dataset, e.split, e.episodes, e.shots, e.seed)  # the split's class index only
    if run is not None:
        choose_synthetic(run, fold.novel, e.synthetic_per_class, e.seed, e.synthetic_run)
    return run
