"""Test helpers: a small diffusion config section and a loaded Stable Diffusion pipeline on the session's tiny
models, and small synthetic runs of toy objects."""

import numpy as np

from maskforge.eval.datasets.toy import render_object
from maskforge.storage.codec import ShardSample
from maskforge.storage.shards import RunWriter, write_config

#: The toy world of toy_run's dataset section unless given.
TOY_WORLD = {"seed": 0, "image_size": 48, "n_train": 80, "n_val": 6}


def diffusion_section(tiny: dict, **overrides) -> dict:
    """A small diffusion config section on the tiny models: 64 px, 2 steps, all three ControlNet conditions."""
    section = {
        "model": tiny["sd"],
        "steps": 2,
        "image_size": 64,
        "batch_size": 4,
        "text": {"samples": 2},
        "embedding": {"samples": 0, "steps": 3},
        "controlnet": {
            "conditions": ["mask", "hed", "scribble"],
            "per_shot": 1,
            "models": {k: tiny[f"controlnet-{k}"] for k in ("mask", "hed", "scribble")},
            "hed_annotator": tiny["hed"],
        },
        "xattn": {"factors": [2, 4]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return section


def sd_pipeline(folder: str, dtype=None, device: str = "cpu"):
    """The Stable Diffusion pipeline of a local diffusers folder (no hub, no safety checker, no progress bars),
    in `dtype` (default: as saved) on `device`."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, torch_dtype=dtype
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def toy_run(
    url: str,
    classes,
    per_class: int = 2,
    dataset: str = "toy",
    fold: int = 0,
    toy: dict | None = None,
    source: str = "text",
    size: int = 40,
    max_count: int = 3,
) -> str:
    """Write a complete maskforge-format run of `per_class` object-centric toy samples per class (`size` px), with a
    config whose dataset section names `dataset`, `fold` and the toy world `toy`; return its folder."""
    world = TOY_WORLD if toy is None else toy
    write_config(url, {"dataset": {"name": dataset, "fold": fold, "toy": world, "root": None}, "run": {"seed": 0}})
    with RunWriter(url, max_count=max_count) as writer:
        for cid in classes:
            for i in range(per_class):
                image, mask = render_object(0, cid, i, size)
                meta = {
                    "dataset": dataset, "fold": fold, "class_id": cid, "class_name": f"c{cid}", "source": source,
                    "mask_method": "semi-accepted", "seed": i, "shot_ids": [], "scores": {}, "config_hash": "h",
                }  # fmt: skip
                label = np.where(mask, cid, 0).astype(np.int32)
                writer.write(ShardSample(f"toy-f{fold}-c{cid:04d}-{source}-{i:05d}", image, label, meta))
        writer.finish({"n_samples": per_class * len(classes)})
    return url
