"""Pre-flight checks of the DiffewS stages: every fault that the config and the files on disk decide, in seconds.

`maskforge diffews train|eval` runs them before Prefect starts (one `error:` line, no server, no flow run), the flows
run them as their first task (deployments skip the CLI), and the stages run them first too: one source of truth.
Nothing here builds a network or hashes weights: it reads config.json and COMPLETE.json files, markers and indexes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from maskforge.eval.datasets import open_dataset
from maskforge.eval.datasets.base import SegDataset, check_split
from maskforge.eval.episode_data import synthetic_id, synthetic_keys
from maskforge.eval.folds import Fold, get_fold
from maskforge.models.diffews.checkpoint import DiffewsCheckpointError, unet_folder
from maskforge.models.loading import check_pipeline_folder, resolve_model_path
from maskforge.storage.fs import check_output_location, exists, join
from maskforge.storage.marked_folder import COMPLETE, MarkedFolderError, read_marked_folder
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.diffews.config import CHECKPOINT_DIR, DiffewsConfig
from maskforge.tasks.diffews.model import autocast_dtype, checkpoint_kind, device_of
from maskforge.tasks.episode_results import choose_synthetic, open_episodes
from maskforge.tasks.synthetic_runs import open_synthetic_run


@dataclass(frozen=True)
class TrainInputs:
    """What check_train_inputs opened, handed to the training stage so that nothing is opened twice."""

    dataset: SegDataset
    fold: Fold
    runs: list[RunReader]
    #: {base class: synthetic ids} of train.synthetic_runs (see synthetic_pools)
    synthetic: dict[int, list[str]]


def synthetic_pools(config: DiffewsConfig, base: tuple[int, ...]) -> tuple[list[RunReader], dict[int, list[str]]]:
    """Open train.synthetic_runs; return (readers, {base class: synthetic ids}); a run without any base-class
    sample is an error naming it."""
    runs, pools = [], {c: [] for c in base}
    for index, url in enumerate(config.train.synthetic_runs):
        run = open_synthetic_run(url, "train.synthetic_runs", config.dataset)
        keys = synthetic_keys(run, base)
        if not any(keys.values()):
            raise ConfigError(
                f"train.synthetic_runs: {url} holds no sample of a base class of fold {config.dataset.fold} "
                f"(base classes {list(base)})"
            )
        runs.append(run)
        for cid, class_keys in keys.items():
            pools[cid] += [synthetic_id(k, index) for k in class_keys]
    return runs, pools


def _config_json(folder: Path, what: str) -> dict:
    """Return a diffusers model folder's config.json; a missing or unreadable one is an error naming `what`."""
    file = folder / "config.json"
    if not file.is_file():
        raise DiffewsCheckpointError(f"{what}: {file} not found (a diffusers model folder has config.json)")
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DiffewsCheckpointError(f"{what}: {file} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("block_out_channels"), list):
        raise DiffewsCheckpointError(f"{what}: {file} has no 'block_out_channels' list")
    return data


def check_img_size(config: DiffewsConfig, vae_dir: Path, unet_dir: Path, what: str) -> int:
    """Check that model.img_size is a multiple of the VAE's x the UNet's downsampling, read from their config.json
    files (2 ** (blocks - 1) each, as models/diffews/segmenter.py:size_multiple); return the multiple."""
    vae = _config_json(vae_dir, "model.sd")
    unet = _config_json(unet_dir, what)
    multiple = 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (len(unet["block_out_channels"]) - 1)
    size = config.model.img_size
    if size % multiple:
        raise ConfigError(f"model.img_size: {size} is not a multiple of {multiple} (VAE x UNet downsampling)")
    return multiple


def sd_folder(config: DiffewsConfig) -> Path:
    """Return model.sd's local pipeline folder, checked (model_index.json and every component it lists)."""
    folder = resolve_model_path(config.model.sd, "model.sd")
    check_pipeline_folder(folder, "model.sd")
    return folder


def check_train_inputs(config: DiffewsConfig) -> TrainInputs | None:
    """Check what train_diffews needs; return None when the checkpoint folder is already complete (reused as is).

    Checks, in order: run.precision runnable on run.device (also for a reused folder, as training does),
    run.out_dir writable, train.split a split of the dataset, every train.synthetic_runs run complete, of this
    dataset and holding base-class samples, the model.sd pipeline folder (and model.unet's config.json when given),
    and model.img_size a multiple of the VAE x UNet downsampling their config.json files give.
    """
    autocast_dtype(config, device_of(config))
    if exists(join(config.train_dir(), CHECKPOINT_DIR, COMPLETE)):
        return None
    check_output_location(config.run.out_dir, field="run.out_dir")
    t = config.train
    dataset = open_dataset(config.dataset)
    fold = get_fold(dataset.name, config.dataset.fold, config.dataset.coco_fold_mode)
    check_split(dataset, t.split, "train.split")
    runs, synthetic = synthetic_pools(config, fold.base)
    sd = sd_folder(config)
    if config.model.unet:
        check_img_size(config, sd / "vae", unet_folder(config.model.unet), "model.unet")
    else:
        check_img_size(config, sd / "vae", sd / "unet", "model.sd")
    return TrainInputs(dataset, fold, runs, synthetic)


def check_trained_size(config: DiffewsConfig, path: str | Path, meta: dict | None) -> None:
    """Check that a maskforge checkpoint (its COMPLETE.json `meta`) was trained at model.img_size."""
    if meta is None:  # an authors' UNet folder: the size is the config's
        return
    trained = meta["config"]["model"]["img_size"]
    if trained != config.model.img_size:
        raise ConfigError(
            f"model.img_size: the checkpoint {path} was trained at {trained} px, the config says "
            f"{config.model.img_size}"
        )


def check_eval_inputs(config: DiffewsConfig) -> RunReader | None:
    """Check what eval_diffews needs; return the opened eval.synthetic_run (None without one).

    Checks, in order: eval.results_dir writable, run.precision runnable on run.device, eval.synthetic_run
    complete and of this dataset and fold, the checkpoint (eval.checkpoint, else training's folder: "train first")
    a maskforge checkpoint folder whose COMPLETE.json lists its files (not hashed here: loading verifies them) and
    was trained at model.img_size, or an authors' UNet folder; the model.sd pipeline folder, model.img_size a
    multiple of the VAE x UNet downsampling, eval.split a split of the dataset whose novel classes give
    eval.shots-shot episodes (its class index only), and the synthetic run holding eval.synthetic_per_class
    generated samples of every novel class.
    """
    e = config.eval
    check_output_location(e.results_dir, field="eval.results_dir")
    autocast_dtype(config, device_of(config))
    run = None
    if e.synthetic_run:
        run = open_synthetic_run(e.synthetic_run, "eval.synthetic_run", config.dataset, fold=True)
    path, kind = checkpoint_kind(config)
    unet_dir = path
    if kind == "maskforge":
        try:
            meta = read_marked_folder(path, ("unet/config.json",), verify=False)
        except MarkedFolderError as err:
            raise DiffewsCheckpointError(f"eval.checkpoint: {err}") from None
        check_trained_size(config, path, meta)
        unet_dir = path / "unet"
    check_img_size(config, sd_folder(config) / "vae", unet_dir, "eval.checkpoint")
    _, fold, _ = open_episodes(config.dataset, e.split, e.episodes, e.shots, e.seed)  # the split's class index only
    if run is not None:
        choose_synthetic(run, fold.novel, e.synthetic_per_class, e.seed, e.synthetic_run)
    return run
