"""The typed HSNet configuration (pydantic v2) for the train_hsnet and eval_hsnet flows, loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.storage.fs import join
from maskforge.storage.yaml_config import (
    HashedConfig,
    PathText,
    SaveEvery,
    Seed,
    StrictConfig,
    digest,
    read_yaml,
    validate_model,
)


class HsnetRunConfig(StrictConfig):
    """Run identity, output location and device."""

    name: str = Field("hsnet", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Run name; lower case, digits, '-', '_'.")
    out_dir: PathText = Field("runs", description="Parent folder of training run folders (NAME-HASH12).")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Where to run: cpu, cuda, or auto (cuda if present)."
    )
    threads: int = Field(
        0, ge=0, le=1024, description="torch CPU threads (0: torch's default; 1 is fastest on a busy 2-core box)."
    )
    save_every_s: SaveEvery = 600.0


class HsnetModelConfig(StrictConfig):
    """The network: backbone, its local weights file, input size, and the tiny backbone's shape."""

    backbone: Literal["resnet50", "resnet101", "vgg16", "tiny"] = "resnet101"
    weights: PathText | None = Field(
        None,
        description="Local torchvision state-dict file of the backbone; training needs it (except 'tiny'), "
        "evaluating a full HSNet checkpoint does not. Never downloaded.",
    )
    img_size: int = Field(400, ge=32, le=1024, description="Square input size; HSNet uses 400.")
    tiny_layers: tuple[int, int, int, int] = Field((1, 2, 2, 2), description="Tiny ResNet: bottlenecks in layer1..4.")
    tiny_width: int = Field(16, ge=4, le=64, description="Tiny ResNet: width per group (inner bottleneck widths).")
    tiny_seed: Seed = Field(0, description="Seed of the tiny backbone's random (frozen) weights.")
    tiny_maxpool: bool = Field(False, description="Tiny ResNet: keep the stem max-pool (output stride 32, not 16).")
    tiny_calibration_images: int = Field(
        128,
        ge=0,
        le=100_000,
        description="Tiny ResNet: train-split images its BatchNorm statistics are estimated on (0: none).",
    )

    @model_validator(mode="after")
    def _weights(self) -> "HsnetModelConfig":
        if self.backbone == "tiny" and self.weights:
            raise ValueError("model.weights must be empty for backbone 'tiny' (its weights are random, from tiny_seed)")
        if min(self.tiny_layers) < 1:
            raise ValueError(f"model.tiny_layers must all be >= 1, got {list(self.tiny_layers)}")
        return self


class HsnetTrainConfig(StrictConfig):
    """Episodic training on the fold's base classes."""

    steps: int = Field(1000, ge=1, le=10_000_000, description="Optimiser steps (batches of 1-shot episodes).")
    batch_size: int = Field(20, ge=1, le=1024, description="Episodes per step (HSNet: 20 PASCAL/FSS, 40 COCO).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (HSNet: 1e-3, no schedule, no weight decay).")
    seed: Seed = Field(0, description="Seed of the learner's initialisation and of the episode stream.")
    split: str = Field("train", description="Split the training episodes come from.")
    synthetic_run: PathText | None = Field(
        None, description="Run folder whose shard samples join each base class's support pool (classes it holds)."
    )
    log_every: int = Field(25, ge=1, le=10_000_000, description="Print the mean loss every this many steps.")


class HsnetEvalConfig(StrictConfig):
    """Episodic evaluation on the fold's novel classes."""

    checkpoint: PathText | None = Field(
        None, description="HSNet checkpoint (.safetensors or the authors' .pt); default: the one `train` writes."
    )
    split: str = Field("val", description="Split the evaluation episodes (queries and supports) come from.")
    episodes: int = Field(
        1000, ge=1, le=10_000_000, description="Episodes (HSNet: 1000; FSS-1000 uses one per image instead)."
    )
    seed: Seed = Field(0, description="Episode seed (HSNet: 0).")
    shots: int = Field(1, ge=1, le=50, description="Real support shots per episode (K).")
    synthetic_run: PathText | None = Field(
        None, description="Run folder with synthetic samples of the novel classes; adds an 'KR+NS' evaluation."
    )
    synthetic_per_class: int = Field(
        20, ge=1, le=1000, description="Synthetic samples added to each episode's supports (N)."
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Images per forward pass.")
    results_dir: PathText = Field(
        "results", description="Folder of the Parquet benchmark table (one file per appended run)."
    )


class HsnetConfig(HashedConfig):
    """The whole configuration of HSNet training and evaluation."""

    RUN_FIELDS = (("train", "synthetic_run"), ("eval", "synthetic_run"))

    run: HsnetRunConfig = HsnetRunConfig()
    dataset: DatasetConfig = DatasetConfig()
    model: HsnetModelConfig = HsnetModelConfig()
    train: HsnetTrainConfig = HsnetTrainConfig()
    eval: HsnetEvalConfig = HsnetEvalConfig()

    def train_hash(self) -> str:
        """Return the sha256 of what defines a trained model: dataset, model and train sections, run name."""
        data = self.resolved()
        keep = {
            "run": {"name": data["run"]["name"]},
            "dataset": data["dataset"],
            "model": data["model"],
            "train": data["train"],
        }
        # a synthetic run is named by its folder; the folder name carries that run's config hash
        return digest(keep)

    def train_dir(self) -> str:
        """Return the training run folder: OUT_DIR/NAME-HASH12 (hash of dataset, model and train sections)."""
        return join(self.run.out_dir, f"{self.run.name}-{self.train_hash()[:12]}")

    def checkpoint_path(self) -> str:
        """Return the checkpoint evaluation reads: eval.checkpoint, else the one training writes."""
        return self.eval.checkpoint or join(self.train_dir(), "hsnet.safetensors")


def parse_hsnet_config(data: dict, source: str = "<config>") -> HsnetConfig:
    """Validate an HSNet config mapping; a ConfigError names `source`, each bad field and what was expected."""
    return validate_model(HsnetConfig, data, source)


def load_hsnet_config(path: str | Path, overrides: dict | None = None) -> HsnetConfig:
    """Load and validate an HSNet YAML config, applying dotted-key overrides like {"train.steps": 10}."""
    return parse_hsnet_config(read_yaml(path, overrides), source=str(path))
