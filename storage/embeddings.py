"""The instance-embedding bank: one safetensors file per (dataset, fold, class, shot, cache key), diffusers format."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

#: The token name stored in each file; pipelines load it under their own token (load_textual_inversion(token=...)).
STORED_TOKEN = "<maskforge-v>"


class EmbeddingMissingError(FileNotFoundError):
    """An embedding the generation needs is not in the bank: names the class, shot and the file expected."""


def _safe(name: str) -> str:
    """Return a file-name-safe form of a shot id (COCO ids hold '/')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "__", name)


def embedding_path(bank: str | Path, dataset: str, fold: int, class_id: int, shot_id: str, key: str) -> Path:
    """Return where the embedding of one shot lives: BANK/DATASET-fFOLD/cCLASS/SHOT-KEY12.safetensors."""
    return Path(bank) / f"{dataset}-f{fold}" / f"c{class_id:04d}" / f"{_safe(shot_id)}-{key[:12]}.safetensors"


def save_embedding(path: Path, vector: torch.Tensor, metadata: dict) -> Path:
    """Write one learned vector as {STORED_TOKEN: (1, D) float32} with JSON metadata; temp name, then rename."""
    if vector.ndim != 1:
        raise ValueError(f"{path}: an embedding is one vector (D,), got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{path}: the learned embedding holds NaN or inf; refusing to store it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {STORED_TOKEN: vector.detach().float().cpu().reshape(1, -1).contiguous()},
        str(tmp),
        metadata={"maskforge": json.dumps(metadata, sort_keys=True)},
    )
    os.replace(tmp, path)
    return path


def read_embedding(path: Path) -> tuple[torch.Tensor, dict]:
    """Return (vector (D,), metadata) of a bank file; a missing or malformed file is an error naming it."""
    if not path.is_file():
        raise EmbeddingMissingError(f"{path}: embedding file not found")
    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
        if keys != [STORED_TOKEN]:
            raise ValueError(f"{path}: expected one tensor named {STORED_TOKEN!r}, found {keys}")
        vector = fh.get_tensor(STORED_TOKEN)
        metadata = json.loads((fh.metadata() or {}).get("maskforge", "{}"))
    return vector.reshape(-1), metadata
