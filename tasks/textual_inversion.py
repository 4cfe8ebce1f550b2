"""Textual-inversion stage: one instance embedding per real shot, learned once and kept in the embedding bank."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from maskforge.eval.datasets import SegDataset, open_dataset
from maskforge.eval.seeds import derive_seed
from maskforge.models.diffusion_config import EmbeddingModeConfig
from maskforge.models.loading import Pipelines, cached_pipelines, size_multiple
from maskforge.models.textual_inversion import learn_embedding, shot_for_training
from maskforge.storage.embeddings import EmbeddingMissingError, embedding_path, save_embedding
from maskforge.storage.labels import binary_mask
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.fold_plan import ClassPlan, FoldPlan
from maskforge.tasks.progress import Progress
from maskforge.tasks.prompts import class_word


def cache_key(
    model_revision: str,
    image: np.ndarray,
    mask: np.ndarray,
    word: str,
    cfg: EmbeddingModeConfig,
    size: tuple[int, int],
    seed: int,
) -> str:
    """Return the sha256 naming one embedding: model revision, image and mask bytes, and every hyper-parameter."""
    digest = hashlib.sha256()
    for array in (image, mask):
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    params = cfg.model_dump(mode="json", exclude={"samples", "bank"})
    digest.update(json.dumps([model_revision, word, params, list(size), seed], sort_keys=True).encode())
    return digest.hexdigest()


def bank_folder(config: MaskforgeConfig) -> Path:
    """Return the embedding bank folder of a config: diffusion.embedding.bank, else OUT_DIR/embeddings."""
    return Path(config.diffusion.embedding.bank or Path(config.run.out_dir) / "embeddings")


def embedding_seed(dataset: str, fold: int, class_id: int, shot_id: str) -> int:
    """Seed of one shot's inversion: independent of the run seed, so runs with other seeds reuse the bank."""
    return derive_seed("embedding", dataset, fold, class_id, shot_id)


def shot_embedding(
    pipes: Pipelines,
    dataset: SegDataset,
    config: MaskforgeConfig,
    plan: FoldPlan,
    class_plan: ClassPlan,
    shot_id: str,
    learn: bool = True,
) -> Path:
    """Return the bank file of one shot's embedding, learning and storing it first when absent and `learn` is set.

    The file name carries the cache key (model revision, image and mask hashes, hyper-parameters, seed): a rerun
    finds it and trains nothing; a change of any of them trains a new one beside it. Without `learn`, a missing
    file is an EmbeddingMissingError naming class, shot and the file expected.
    """
    cfg = config.diffusion.embedding
    record = dataset.load(shot_id)
    image, mask = shot_for_training(
        record.image,
        binary_mask(record.label, class_plan.class_id),
        cfg.image_size or config.diffusion.image_size,
        size_multiple(pipes.sd),
    )
    word = class_word(class_plan.class_name)
    seed = embedding_seed(plan.dataset, plan.fold, class_plan.class_id, shot_id)
    key = cache_key(pipes.refs["sd"].revision, image, mask, word, cfg, mask.shape, seed)
    path = embedding_path(bank_folder(config), plan.dataset, plan.fold, class_plan.class_id, shot_id, key)
    if path.is_file():
        return path
    if not learn:
        raise EmbeddingMissingError(
            f"class {class_plan.class_name!r} shot {shot_id!r}: no embedding at {path} (the learn-embedding stage "
            "writes it; the embedding-prompt mode never falls back to plain text)"
        )
    progress = Progress(f"{class_plan.class_name}: embedding of shot {shot_id}", cfg.steps, "steps")

    def on_step(step: int, loss: float) -> None:
        progress.advance(step - progress.done, note=f"loss {loss:.4f}")

    # the loss is read every tenth of the steps (Progress prints as often): no host sync in between on a GPU
    learned = learn_embedding(
        pipes.sd, image, mask, word, cfg, seed, on_step=on_step, log_every=max(1, cfg.steps // 10)
    )
    report = pipes.compile_report()
    if report:
        print(f"{class_plan.class_name}: embedding: {report}")
    metadata = {
        "cache_key": key,
        "dataset": plan.dataset,
        "fold": plan.fold,
        "class_id": class_plan.class_id,
        "class_name": class_plan.class_name,
        "shot_id": shot_id,
        "model": pipes.refs["sd"].to_dict(),
        "seed": seed,
        "size": list(mask.shape),
        "hyper_parameters": cfg.model_dump(mode="json", exclude={"samples", "bank"}),
        "steps_run": len(learned.losses),
        "first_loss": learned.losses[0],
        "final_loss": learned.losses[-1],
        "seconds": round(learned.seconds, 3),
    }
    return save_embedding(path, learned.vector, metadata)


def learn_shot_embedding(config: MaskforgeConfig, plan: FoldPlan, class_id: int, shot_id: str) -> str:
    """Learn (or find in the bank) one shot's embedding for a run's config; return the bank file."""
    class_plan = plan.novel_class(class_id)
    if shot_id not in class_plan.shot_ids:
        raise ValueError(f"shot {shot_id!r} is not a shot of class {class_id} ({list(class_plan.shot_ids)})")
    pipes = cached_pipelines(config.diffusion)
    return str(shot_embedding(pipes, open_dataset(config.dataset), config, plan, class_plan, shot_id))
