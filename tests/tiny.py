"""Test helpers on the session's tiny models: a small diffusion config section, a loaded Stable Diffusion pipeline."""


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
