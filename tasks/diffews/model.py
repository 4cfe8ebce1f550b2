"""Building, loading and placing the DiffewS network a config names (shared by training and evaluation)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from maskforge.models.device import resolve_device
from maskforge.models.diffews.checkpoint import (
    DiffewsCheckpointError,
    build_from_sd,
    empty_prompt_embedding,
    load_diffews,
    load_diffews_unet,
    load_frozen_parts,
    unet_folder,
)
from maskforge.models.diffews.network import DiffewsNet
from maskforge.storage.marked_folder import COMPLETE
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.diffews.config import DiffewsConfig


def autocast_dtype(config: DiffewsConfig, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype of run.precision on the device (None: fp32; the CPU always runs fp32)."""
    if device.type == "cpu":
        if config.run.precision in ("bf16", "fp16"):
            raise ConfigError(f"run.precision: {config.run.precision} needs a GPU; use fp32 or auto on the CPU")
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[config.run.precision]


def embedding_sha(text_embedding: torch.Tensor) -> str:
    """Return the sha256 of an embedding's float32 bytes (recorded by training and evaluation to show they match)."""
    return hashlib.sha256(text_embedding.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def new_network(config: DiffewsConfig) -> DiffewsNet:
    """Return the network training starts from: model.unet (a DiffewS UNet folder) or SD's UNet + conv_in_ref, the
    SD folder's frozen VAE, and the empty-prompt embedding of its text encoder (computed here, once)."""
    unet = load_diffews_unet(config.model.unet, "model.unet") if config.model.unet else build_from_sd(config.model.sd)
    vae, tokenizer, encoder = load_frozen_parts(config.model.sd)
    return DiffewsNet(unet, vae, empty_prompt_embedding(tokenizer, encoder))


def checkpoint_kind(config: DiffewsConfig) -> tuple[Path, str]:
    """Return (checkpoint path, "maskforge" or "unet") of what evaluation loads: a maskforge checkpoint folder (with
    COMPLETE.json) or an authors' UNet folder (with config.json; or the folder holding it as unet/, which their
    scripts take); anything else is a DiffewsCheckpointError. For "unet" the path returned is the UNet folder."""
    path = Path(config.checkpoint_path())
    if (path / COMPLETE).is_file():
        return path, "maskforge"
    unet_dir = unet_folder(path)
    if (unet_dir / "config.json").is_file():
        return unet_dir, "unet"
    raise DiffewsCheckpointError(
        f"eval.checkpoint: {path} is neither a DiffewS checkpoint folder (with {COMPLETE}) nor a UNet folder (with "
        "config.json, or holding unet/config.json); train first (maskforge diffews train CONFIG) or set "
        "eval.checkpoint"
    )


def trained_network(config: DiffewsConfig) -> tuple[DiffewsNet, str, dict | None]:
    """Return (network, checkpoint path, its metadata) for evaluation: a maskforge checkpoint folder (with the
    embedding training used) or an authors' UNet folder (embedding computed from model.sd; metadata None)."""
    path, kind = checkpoint_kind(config)
    vae, tokenizer, encoder = load_frozen_parts(config.model.sd)
    if kind == "maskforge":
        unet, text, meta = load_diffews(path)
        return DiffewsNet(unet, vae, text), str(path), meta
    unet = load_diffews_unet(path, "eval.checkpoint")
    return DiffewsNet(unet, vae, empty_prompt_embedding(tokenizer, encoder)), str(path), None


def device_of(config: DiffewsConfig) -> torch.device:
    """Return the torch device of run.device."""
    return resolve_device(config.run.device)
