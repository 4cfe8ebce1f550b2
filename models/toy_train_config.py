"""The toy-training config (`maskforge toy train-*`): pydantic models only, no torch, so the CLI validates a config
file in a fraction of a second (the training loops are in models/toy_train.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from maskforge.storage.yaml_config import Seed, StrictConfig, read_yaml, validate_model


class VaeTrain(StrictConfig):
    """Autoencoder training: L2 + L1 reconstruction and a small KL term."""

    steps: int = Field(3000, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=1024)
    lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0, description="Weight of the per-image KL sum (SD's autoencoders: 1e-6).")


class DiffusionTrain(StrictConfig):
    """Text-to-image training of the UNet and text encoder together (epsilon prediction, min-SNR weighting)."""

    steps: int = Field(8000, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0)
    template: str = Field("a photo of a {class}", description="Caption of a training image; {class} is its class name.")
    prompt_dropout: float = Field(0.1, ge=0, le=1, description="Share of empty captions (classifier-free guidance).")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights that are saved.")
    snr_gamma: float = Field(5.0, gt=0, description="Min-SNR loss weighting gamma.")
    grounding_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the cross-attention grounding loss "
        "(models/grounding.py): the class word's map against the object mask; 0: off.",
    )
    grounding_factors: list[int] = Field(
        [2, 4],
        min_length=1,
        description="Latent downsampling factors whose "
        "cross-attention layers are grounded (those xattn masks are read from).",
    )


class ControlNetTrain(StrictConfig):
    """ControlNet training on the frozen text-to-image model, one network per condition kind."""

    kinds: list[Literal["mask", "hed", "scribble"]] = ["mask", "hed", "scribble"]
    steps: int = Field(3000, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0)
    prompt_dropout: float = Field(0.1, ge=0, le=1)
    mask_color: tuple[int, int, int] = (255, 255, 255)
    hed_dilation: int = Field(14, ge=1, le=255)
    object_radius: tuple[float, float] = Field(
        (0.22, 0.38),
        description="Object radius range (share of the side) of the ControlNet's training images: "
        "wider than the diffusion model's, since real shots' masks are often small.",
    )
    object_centre: tuple[float, float] = Field((0.38, 0.62), description="Object centre range (share of the side).")

    @model_validator(mode="after")
    def _ranges(self) -> "ControlNetTrain":
        for name in ("object_radius", "object_centre"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} {[low, high]}: expected 0 < low <= high <= 1 (shares of the image side)")
        return self


class ToyTrainConfig(StrictConfig):
    """Everything `maskforge toy train-*` needs: data, seed, device and each model's schedule."""

    seed: Seed = 0
    fold: int = Field(0, ge=0, le=3, description="Toy fold: models see only its base classes.")
    world_seed: Seed = Field(0, description="Seed of the toy world the training images are rendered from.")
    image_size: int = Field(64, ge=32, le=1024)
    images_per_class: int = Field(400, ge=1, le=100_000)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int = Field(2, ge=0, le=1024, description="torch CPU threads (0: torch's default).")
    log_every: int = Field(250, ge=1, le=10_000_000)
    vae: VaeTrain = VaeTrain()
    diffusion: DiffusionTrain = DiffusionTrain()
    ground: DiffusionTrain = Field(
        DiffusionTrain(steps=1000, lr=2e-4, ema_decay=0.995, grounding_weight=1.0),
        description="`maskforge toy ground`: fine-tune a trained out/sd with the grounding loss on.",
    )
    controlnet: ControlNetTrain = ControlNetTrain()


def load_toy_train_config(path: str | Path) -> ToyTrainConfig:
    """Read and validate a toy training YAML config."""
    return validate_model(ToyTrainConfig, read_yaml(path), str(path))
