"""Shared pieces of the benches: the models they time, toy shots, device set-up and the JSON writer."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from maskforge.eval.datasets import build_dataset
from maskforge.eval.datasets.config import ToyConfig
from maskforge.models.clip_tokenizer import build_clip_tokenizer
from maskforge.models.controls import resize_image, resize_mask
from maskforge.models.speedups import SpeedupError, SpeedupPlan, Speedups, apply_speedups
from maskforge.models.tiny import SD_DIR, build_tiny_models, sd1_scheduler
from maskforge.storage.labels import binary_mask


def sd_vae_random():
    """Return an AutoencoderKL of SD 1.x / 2.x's architecture with random weights (scaling factor 0.18215)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
        scaling_factor=0.18215,
    )


def sd15_random(dtype: torch.dtype, device: torch.device):
    """Return an SD 1.5-architecture pipeline with random weights (timing only: no checkpoint is read)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
        )
        vae = sd_vae_random()
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
            )
        )
    scheduler = sd1_scheduler()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=build_clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(device=device, dtype=dtype)


def write_json(path: str, result: dict) -> None:
    """Write a bench's figures as indented JSON, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))


def tiny_pipeline(folder: str | None):
    """Return the tiny SD pipeline from `folder`, building it in a temp folder when none is given."""
    from diffusers import StableDiffusionPipeline

    if folder is None:
        folder = build_tiny_models(tempfile.mkdtemp(prefix="maskforge-bench-"))[SD_DIR]
    return StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)


def toy_shots(k: int, size: int, class_id: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return K toy (image, bool mask) pairs of one class (default: red disc) at size x size."""

    dataset = build_dataset("toy", None, ToyConfig(image_size=64, n_train=40, n_val=4))
    shots = []
    for image_id in sorted(dataset.class_index("train")[class_id])[:k]:
        record = dataset.load(image_id)
        mask = binary_mask(record.label, class_id)
        shots.append((resize_image(record.image, (size, size)), resize_mask(mask, (size, size))))
    return shots


def setup_device(threads: int | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """Set torch threads if asked; return (CUDA if present else CPU, dtype: the given one, else bf16 GPU / fp32 CPU)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, getattr(torch, dtype or ("bfloat16" if device.type == "cuda" else "float32"))


def bench_pipeline(full_size: bool, model: str | None, size: int | None, device, dtype):
    """Return (pipeline, image size, captured factors): SD 1.5 random at 512 px, or the tiny model at 64 px."""
    if full_size:
        return sd15_random(dtype, device), size or 512, (1, 2, 4)
    return tiny_pipeline(model).to(device=device, dtype=dtype), size or 64, (2, 4)


def run_header(device: torch.device, full_size: bool, dtype: torch.dtype, size: int, batch: int, steps: int, factors):
    """Return the fields every generation-timing bench records first: device, model, dtype, size, batch, steps."""
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": "sd15-random" if full_size else "tiny",
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "batch": batch,
        "steps": steps,
        "factors": list(factors),
    }


def add_compile_flag(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add --compile {auto,on,off}: auto = on with CUDA. On means the whole speed set (diffusion.compile, channels-last,
    fused self-attention projections), so compiled rows are what a configured run gets."""
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=default,
        help=f"torch.compile + channels-last + fused self-attention qkv (auto = on with CUDA; default {default})",
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode (diffusion.compile_mode)",
    )
    parser.add_argument(
        "--compile-scope",
        default="model",
        choices=["model", "blocks"],
        help="what is compiled (diffusion.compile_scope): the whole UNet forward, or only its transformer blocks",
    )


def speed_plan(args: argparse.Namespace, device: torch.device) -> SpeedupPlan:
    """Return the speed set of --compile / --compile-mode / --compile-scope on `device`: everything on, or
    everything off."""
    on = device.type == "cuda" if args.compile == "auto" else args.compile == "on"
    try:
        return SpeedupPlan(on, args.compile_mode, channels_last=on, fuse_qkv=on, scope=args.compile_scope)
    except SpeedupError as err:  # one line naming the flags, before any model is loaded
        raise SystemExit(f"--compile-scope / --compile-mode: {err}") from None


def apply_speed_plan(pipe, plan: SpeedupPlan) -> Speedups | None:
    """Apply a plan to a bench pipeline (None when it is all off: the stock pipeline as loaded)."""
    return apply_speedups(pipe, plan) if plan.compile or plan.channels_last or plan.fuse_qkv else None


def with_fields(config, **sections: dict):
    """Return a copy of a pydantic config with fields of some sections replaced, e.g. head={"guidance": 1.0}."""
    update = {name: getattr(config, name).model_copy(update=fields) for name, fields in sections.items()}
    return config.model_copy(update=update)
