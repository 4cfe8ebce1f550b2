"""The typed DiffewS configuration (pydantic v2) for the train_diffews and eval_diffews flows, loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.storage.fs import join
from maskforge.storage.yaml_config import (
    HashedConfig,
    PathText,
    SaveEvery,
    Seed,
    StrictConfig,
    digest,
    distinct_runs,
    read_yaml,
    validate_model,
)

#: Checkpoint folder name inside a training run folder.
CHECKPOINT_DIR = "diffews"


class DiffewsRunConfig(StrictConfig):
    """Run identity, output location and device."""

    name: str = Field(
        "diffews", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Run name; lower case, digits, '-', '_'."
    )
    out_dir: PathText = Field("runs", description="Parent folder of training run folders (NAME-HASH12).")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="cpu, cuda, or auto (cuda if present).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast type on GPU (auto: bf16); the CPU always runs fp32."
    )
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads (0: torch's default).")
    save_every_s: SaveEvery = 600.0
    gradient_checkpointing: bool = Field(
        False,
        description="Training recomputes the UNet's blocks in backward instead of keeping their activations (less "
        "memory, more time; the KV bank is replayed, so the gradients are the same). Not part of the hashes.",
    )


class DiffewsModelConfig(StrictConfig):
    """Where the diffusion parts come from and the square input size."""

    sd: PathText = Field(
        "models/toy/sd",
        description="Local SD pipeline folder (SD 2.1 for real use): VAE, tokenizer, text encoder, and the UNet "
        "training starts from. Never downloaded.",
    )
    unet: PathText | None = Field(
        None,
        description="A DiffewS UNet folder (the authors' release: config.json + weights with conv_in_ref.*) to "
        "start training from instead of SD's UNet.",
    )
    img_size: int = Field(512, ge=32, le=1024, description="Square size images and masks are resized to (512).")


class DiffewsTrainConfig(StrictConfig):
    """Episodic training on the fold's base classes (the whole UNet; VAE and text encoder frozen)."""

    steps: int = Field(20000, ge=1, le=1_000_000, description="Optimiser steps.")
    batch_size: int = Field(1, ge=1, le=64, description="Episodes per batch, all of one shot count (authors: 1).")
    grad_accumulation: int = Field(1, ge=1, le=64, description="Batches per optimiser step (authors: 4).")
    max_shots: int = Field(2, ge=1, le=16, description="Each step draws n in [1, max_shots] supports per episode.")
    lr: float = Field(1e-5, gt=0, le=1.0, description="AdamW learning rate, decayed linearly to 0.")
    weight_decay: float = Field(1e-2, ge=0, le=1.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    seed: Seed = Field(0, description="Seed of the episode stream and the VAE posterior samples.")
    split: str = Field("train", description="Split the training episodes come from.")
    synthetic_runs: list[PathText] = Field(
        default_factory=list,
        description="maskforge run folders whose samples of base classes join training as queries and supports.",
    )
    log_every: int = Field(50, ge=1, le=10_000_000, description="Log the mean loss every this many steps.")

    @field_validator("synthetic_runs")
    @classmethod
    def _distinct_runs(cls, runs: list[str]) -> list[str]:
        return distinct_runs(runs, "train.synthetic_runs")


class DiffewsEvalConfig(StrictConfig):
    """Episodic evaluation on the fold's novel classes (HSNet's protocol)."""

    checkpoint: PathText | None = Field(
        None, description="DiffewS checkpoint folder (maskforge's) or an authors' UNet folder; default: training's."
    )
    split: str = Field("val", description="Split the evaluation episodes come from.")
    episodes: int = Field(1000, ge=1, le=100_000, description="Episodes (HSNet protocol: 1000).")
    seed: Seed = Field(0, description="Episode seed (HSNet: 0).")
    shots: int = Field(1, ge=1, le=16, description="Real support shots per episode (K).")
    synthetic_run: PathText | None = Field(
        None, description="Run folder of synthetic novel-class samples: adds 'KR+NS'."
    )
    synthetic_per_class: int = Field(20, ge=1, le=64, description="Synthetic supports added to each episode (N).")
    threshold_rule: Literal["authors", "mean-floor"] = Field(
        "authors",
        description="Mask cut. authors: the decode truncated to uint8, foreground where the channel mean > "
        "relative_threshold x the maximum over all three channels and pixels, no floor (their evaluation code). "
        "mean-floor: float channel mean > max(relative_threshold x its maximum, threshold_floor) (the toy world).",
    )
    relative_threshold: float = Field(
        0.25, gt=0, lt=1, description="Foreground where the decode's channel mean > this x the maximum (see rule)."
    )
    threshold_floor: float = Field(
        0.0, ge=0, lt=1, description="mean-floor only: ... and > this absolute value (an all-black decode is empty)."
    )
    score_at: Literal["img_size", "original"] = Field(
        "img_size",
        description="Size masks are scored at. img_size: model.img_size square, the ground truth resized nearest "
        "(the authors: evaluation_util/data/coco.py, use_original_imgsize off); original: each query's own size.",
    )
    results_dir: PathText = Field("results", description="Folder of the Parquet benchmark table.")

    @model_validator(mode="after")
    def _floor_of_rule(self) -> "DiffewsEvalConfig":
        if self.threshold_rule == "authors" and self.threshold_floor:
            raise ValueError(
                f"eval.threshold_floor: {self.threshold_floor} given with threshold_rule 'authors', which has no "
                "floor; expected 0 (or threshold_rule: mean-floor)"
            )
        return self


class DiffewsConfig(HashedConfig):
    """The whole configuration of DiffewS training and evaluation."""

    RUN_FIELDS = (("train", "synthetic_runs"), ("eval", "synthetic_run"))

    UNHASHED = (*HashedConfig.UNHASHED, ("run", "precision"), ("run", "gradient_checkpointing"))

    run: DiffewsRunConfig = DiffewsRunConfig()
    dataset: DatasetConfig = DatasetConfig()
    model: DiffewsModelConfig = DiffewsModelConfig()
    train: DiffewsTrainConfig = DiffewsTrainConfig()
    eval: DiffewsEvalConfig = DiffewsEvalConfig()

    def train_hash(self) -> str:
        """Return the sha256 of what defines a trained model: run name, dataset, model and train sections."""
        data = self.resolved()
        keep = {"run": {"name": data["run"]["name"]}, **{k: data[k] for k in ("dataset", "model", "train")}}
        return digest(keep)

    def train_dir(self) -> str:
        """Return the training run folder: OUT_DIR/NAME-HASH12."""
        return join(self.run.out_dir, f"{self.run.name}-{self.train_hash()[:12]}")

    def checkpoint_path(self) -> str:
        """Return the checkpoint evaluation reads: eval.checkpoint, else the folder training writes."""
        return self.eval.checkpoint or join(self.train_dir(), CHECKPOINT_DIR)


def parse_diffews_config(data: dict, source: str = "<config>") -> DiffewsConfig:
    """Validate a DiffewS config mapping; a ConfigError names `source`, each bad field and what was expected."""
    return validate_model(DiffewsConfig, data, source)


def load_diffews_config(path: str | Path, overrides: dict | None = None) -> DiffewsConfig:
    """Load and validate a DiffewS YAML config, applying dotted-key overrides like {"train.steps": 10}."""
    return parse_diffews_config(read_yaml(path, overrides), source=str(path))
