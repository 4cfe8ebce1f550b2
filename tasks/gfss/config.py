"""The typed GFSS configuration (pydantic v2) of the train_gfss_base, train_gfss_novel and eval_gfss flows."""

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


class GfssRunConfig(StrictConfig):
    """Run identity, output location and device."""

    name: str = Field("gfss", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Run name; lower case, digits, '-', '_'.")
    out_dir: PathText = Field("runs", description="Parent folder of the base and novel stage folders.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where to run: cpu, cuda, or auto.")
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads (0: torch's default).")
    save_every_s: SaveEvery = 600.0
    amp: bool = Field(True, description="bf16 autocast on CUDA (GAPS trains with AMP); ignored on CPU.")


class GfssModelConfig(StrictConfig):
    """DeepLabV3 (ResNet-101, ASPP) with GAPS's cosine head, or the tiny backbone of the toy world."""

    backbone: Literal["resnet101", "tiny"] = "resnet101"
    weights: PathText | None = Field(
        None, description="Local torchvision ResNet-101 ImageNet state dict for the base stage; never downloaded."
    )
    output_stride: Literal[8, 16] = Field(16, description="DeepLabV3 output stride (GAPS: 16).")
    aspp_channels: int = Field(256, ge=8, le=1024, description="ASPP depth = feature channels of the cosine head.")
    aspp_rates: tuple[int, int, int] = Field((6, 12, 18), description="ASPP dilation rates.")
    tiny_layers: tuple[int, int, int, int] = Field((1, 1, 1, 1), description="Tiny ResNet: bottlenecks per layer.")
    tiny_width: int = Field(16, ge=4, le=64, description="Tiny ResNet: width per group.")
    tiny_seed: Seed = Field(0, description="Seed of the tiny backbone's initial weights.")
    tiny_maxpool: bool = Field(False, description="Tiny ResNet: keep the stem max-pool.")

    @model_validator(mode="after")
    def _weights(self) -> "GfssModelConfig":
        if self.backbone == "tiny" and self.weights:
            raise ValueError("model.weights must be empty for backbone 'tiny' (it is trained from scratch)")
        if min(self.tiny_layers) < 1 or max(self.tiny_layers) > 8:
            raise ValueError(f"model.tiny_layers must each be in 1..8, got {list(self.tiny_layers)}")
        if min(self.aspp_rates) < 1 or max(self.aspp_rates) > 64:
            raise ValueError(f"model.aspp_rates must each be in 1..64, got {list(self.aspp_rates)}")
        return self


class GfssBaseConfig(StrictConfig):
    """The base stage: supervised training on the leakage-free base set (GAPS's recipe)."""

    checkpoint: PathText | None = Field(
        None,
        description="Use this base checkpoint (ours .safetensors or the authors' *_final.pt) instead of training one.",
    )
    split: str = Field("train", description="Split the base set is drawn from (images with no novel pixel).")
    # GAPS's base yaml (configs/fs_incremental/pascal5i_base.yaml:46-49): max_epochs 20, batch_size 32, polynomial
    # lr; main/train.py:98-101 and :122-124 step the poly schedule once per epoch; trainer_base.py:26 drops the last
    # partial batch
    epochs: int = Field(20, ge=1, le=10_000, description="Epochs over the base set (GAPS: 20); lr decays per epoch.")
    steps: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="0: epochs x (base images // batch_size) steps, poly per epoch (GAPS); N: exactly N steps, poly "
        "per step (short runs and tests).",
    )
    # the ASPP's image-pooling branch batch-normalises one value per image and channel: torch refuses BatchNorm in
    # training on a single value per channel, so a batch of 1 failed at the first step, after the server had started
    batch_size: int = Field(
        32, ge=2, le=1024, description="Base-stage batch (GAPS: 32); at least 2 for the ASPP pooling's BatchNorm."
    )
    lr: float = Field(0.01, gt=0, le=1, description="SGD learning rate (GAPS: 0.01 PASCAL, 0.007 COCO).")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, le=0.1)
    poly_power: float = Field(0.9, ge=0, le=10, description="Polynomial decay power of the learning rate.")
    crop_size: int = Field(512, ge=16, le=2048, description="Square training crop (GAPS: 512).")
    scale: tuple[float, float] = Field((0.5, 2.0), description="Random rescale range before cropping.")
    seed: Seed = Field(1221, description="Seed of initialisation and data order (GAPS: 1221).")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")
    log_every: int = Field(50, ge=1, le=1_000_000)


class GfssNovelConfig(StrictConfig):
    """The incremental stage: per run seed and step, imprint, then fine-tune on the step's data."""

    method: Literal["finetune", "gaps", "shot-only"] = Field(
        "gaps",
        description="gaps: GAPS; finetune: AlignDiff's FINETUNE (GAPS's copy-paste onto buffer_size random base "
        "images, no guided buffer, no context sampling); shot-only: fine-tune on the real shots alone.",
    )
    synthetic_runs: tuple[PathText, ...] = Field(
        (), max_length=32, description="Completed maskforge runs whose samples of the step's classes join the data."
    )
    synthetic_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of pasted objects (gaps, finetune) or samples (shot-only) drawn from synthetic runs.",
    )
    shots: int = Field(1, ge=1, le=50, description="Real shots per novel class.")
    split: str = Field("train", description="Split the real shots (and the replay buffer) come from.")
    runs: int = Field(10, ge=1, le=100, description="GAPS run seeds (PASCAL 10, COCO 5).")
    master_seed: Seed = Field(4321, description="Seed of the run-seed list (GAPS: 4321).")
    classes_per_step: int = Field(1, ge=1, le=80, description="Novel classes learned per step (PASCAL 1, COCO 5).")
    iterations: int = Field(200, ge=1, le=100_000, description="Fine-tuning iterations per step.")
    batch_size: int = Field(10, ge=1, le=1024, description="Fine-tuning batch (GAPS: 10 PASCAL, 16 COCO).")
    lr_backbone: float = Field(1e-3, gt=0, le=1)
    lr_head: float = Field(1e-2, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    # GAPS builds the fine-tuning SGD with momentum only (fs_incremental_trainer.py:427): no weight decay
    weight_decay: float = Field(0.0, ge=0, le=0.1, description="Fine-tuning SGD weight decay (GAPS: none).")
    poly_power: float = Field(0.9, ge=0, le=10)
    feature_reg: float = Field(0.1, ge=0, le=100, description="λ of the MSE against the previous step's features.")
    buffer_size: int = Field(
        500, ge=1, le=100_000, description="Base images pasted onto: GAPS's guided buffer (gaps), random (finetune)."
    )
    buffer_images: int = Field(
        0, ge=0, le=10_000_000, description="Base images scored for the buffer (0: every base image of the split)."
    )
    context_prob: float = Field(0.9, ge=0, le=1, description="GAPS: probability of a context-similar base image.")
    context_top: float = Field(0.05, gt=0, le=1, description="GAPS: share of the buffer counted as context-similar.")
    paste_scale: tuple[float, float] = Field((0.1, 2.0), description="GAPS: object rescale range.")
    workers: int = Field(1, ge=0, le=64, description="DataLoader worker processes of the training feed.")

    @field_validator("synthetic_runs")
    @classmethod
    def _distinct_runs(cls, runs: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_runs(runs, "novel.synthetic_runs")


class GfssEvalConfig(StrictConfig):
    """PIFS evaluation on the whole val split."""

    split: str = Field("val", description="Split evaluated at full resolution.")
    max_images: int = Field(0, ge=0, le=10_000_000, description="Evaluate only the first N images (0: all).")
    results_dir: PathText = Field("results", description="Folder of the Parquet benchmark table.")


class GfssConfig(HashedConfig):
    """The whole configuration of the GFSS learners."""

    RUN_FIELDS = (("novel", "synthetic_runs"),)

    run: GfssRunConfig = GfssRunConfig()
    dataset: DatasetConfig = DatasetConfig()
    model: GfssModelConfig = GfssModelConfig()
    base: GfssBaseConfig = GfssBaseConfig()
    novel: GfssNovelConfig = GfssNovelConfig()
    eval: GfssEvalConfig = GfssEvalConfig()

    @model_validator(mode="after")
    def _ranges(self) -> "GfssConfig":
        for name, (low, high) in (("base.scale", self.base.scale), ("novel.paste_scale", self.novel.paste_scale)):
            if not 0 < low <= high <= 10:
                raise ValueError(f"{name} must be 0 < min <= max <= 10, got [{low}, {high}]")
        if self.dataset.name == "fss":
            raise ValueError("dataset.name: GFSS needs base classes with full labels (pascal, coco or toy), not fss")
        return self

    def setting(self) -> str:
        """Return the benchmark setting name: the method, '+synthetic' when synthetic runs join."""
        return self.novel.method + ("+synthetic" if self.novel.synthetic_runs else "")

    def base_hash(self) -> str:
        """Return the sha256 of what defines the base model: name, dataset, model and base sections."""
        d = self.resolved()
        return digest({"name": d["run"]["name"], "dataset": d["dataset"], "model": d["model"], "base": d["base"]})

    def novel_hash(self) -> str:
        """Return the sha256 of what defines the novel stage: the base identity plus the novel section."""
        d = self.resolved()
        novel = dict(d["novel"])
        novel.pop("workers")  # how data is fed does not change what is learned
        return digest({"base": self.base_hash(), "novel": novel})

    def base_dir(self) -> str:
        """Return the base stage folder OUT_DIR/NAME-base-HASH12."""
        return join(self.run.out_dir, f"{self.run.name}-base-{self.base_hash()[:12]}")

    def base_checkpoint(self) -> str:
        """Return the base checkpoint the novel stage starts from: base.checkpoint, else the base stage's."""
        return self.base.checkpoint or join(self.base_dir(), "gfss-base.safetensors")

    def novel_dir(self) -> str:
        """Return the novel stage folder OUT_DIR/NAME-SETTING-HASH12."""
        setting = self.setting().replace("+", "-")
        return join(self.run.out_dir, f"{self.run.name}-{setting}-{self.novel_hash()[:12]}")


def parse_gfss_config(data: dict, source: str = "<config>") -> GfssConfig:
    """Validate a GFSS config mapping; a ConfigError names `source`, each bad field and what was expected."""
    return validate_model(GfssConfig, data, source)


def load_gfss_config(path: str | Path, overrides: dict | None = None) -> GfssConfig:
    """Load and validate a GFSS YAML config, applying dotted-key overrides like {"novel.method": "finetune"}."""
    return parse_gfss_config(read_yaml(path, overrides), source=str(path))
