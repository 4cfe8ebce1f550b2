"""The typed MaskDiff configuration (pydantic v2) for the train_maskdiff and eval_maskdiff flows, loaded from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.eval.folds import COCO_CLASSES
from maskforge.eval.fsis_protocol import tfa_files_present
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

#: head fields that only steer sampling (left out of the stage folders' hashes).
SAMPLING_FIELDS = ("guidance", "sampler", "ddim_steps")
#: TFA's K-shot settings on COCO.
TFA_SHOTS = (1, 2, 3, 5, 10, 30)
#: TFA's COCO fine-tuning iterations per K (all classes, batch 16, lr 0.001, x0.1 at 90 %: ucbdrive/few-shot-object-
#: detection 148a039, configs/COCO-detection/faster_rcnn_R_101_FPN_ft_all_{K}shot.yaml:19-24, MAX_ITER and STEPS).
TFA_FINETUNE_ITERS = {1: 16000, 2: 32000, 3: 48000, 5: 80000, 10: 160000, 30: 240000}
#: ... and the fraction of them where the learning rate drops x0.1 (STEPS = 0.9 MAX_ITER in every K's config).
TFA_FINETUNE_DECAY_AT = 0.9


def drop_defaults(model: Any, data: dict, names: tuple[str, ...]) -> dict:
    """Return a model's dump without the fields in `names` that hold their default: fields added after stage folders
    and rows were named, so every existing config keeps its dump, its stage folders and its hash."""
    for name in names:
        if getattr(model, name) == type(model).model_fields[name].default:
            data.pop(name, None)
    return data


class MaskdiffRunConfig(StrictConfig):
    """Run identity, output location and device."""

    name: str = Field(
        "maskdiff", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Run name; lower case, digits, '-', '_'."
    )
    out_dir: PathText = Field(
        "runs", description="Parent folder of stage folders (NAME-base-HASH12, NAME-kK-sS-HASH12)."
    )
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="cpu, cuda, or auto (cuda if present).")
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads (0: torch's default).")
    save_every_s: SaveEvery = 600.0


class MaskdiffDetectorConfig(StrictConfig):
    """The TFA detector: torchvision Faster R-CNN."""

    backbone: Literal["resnet50", "tiny"] = "resnet50"
    weights: PathText | None = Field(
        None, description="Local torchvision ResNet-50 ImageNet state dict for base training; never downloaded."
    )
    min_size: int = Field(800, ge=32, le=2048, description="torchvision transform min_size.")
    max_size: int = Field(1333, ge=32, le=2048, description="torchvision transform max_size.")

    @model_validator(mode="after")
    def _weights(self) -> "MaskdiffDetectorConfig":
        if self.backbone == "tiny" and self.weights:
            raise ValueError("detector.weights must be empty for backbone 'tiny' (random, trained from scratch)")
        if self.min_size > self.max_size:
            raise ValueError(f"detector.min_size {self.min_size} is above detector.max_size {self.max_size}")
        return self


#: UNet levels of each head architecture (models/maskdiff/mask_head.py: paper_spec, tiny_spec; a test keeps them
#: equal): the mask side must halve cleanly at every level but the last, so it is a multiple of 2^(levels - 1).
HEAD_LEVELS = {"paper": 5, "tiny": 3}


class MaskdiffHeadConfig(StrictConfig):
    """The conditional mask-diffusion head and its sampler."""

    arch: Literal["paper", "tiny"] = Field("paper", description="paper: 128/128/256/384/512; tiny: the toy world's.")
    size: int = Field(128, ge=16, le=256, description="Mask and crop side (paper: 128).")
    p_uncond: float = Field(0.1, ge=0, le=1, description="Probability the class is replaced by the null class.")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "epsilon",
        description="What the UNet predicts: epsilon (paper Alg. 1) or v (keeps loss weight on the mask at low "
        "signal-to-noise, where only the region crop tells its shape). Stored in the head's spec.",
    )
    guidance: float = Field(5.0, ge=0, le=20, description="w in eps = w eps(c) + (1 - w) eps(null) (paper: 5).")
    sampler: Literal["ddpm", "ddim"] = Field("ddpm", description="ddpm: the 1000-step ancestral sampler (paper).")
    ddim_steps: int = Field(50, ge=1, le=1000, description="Steps of the DDIM sampler.")

    @model_validator(mode="after")
    def _size_fits_the_levels(self) -> "MaskdiffHeadConfig":
        step = 2 ** (HEAD_LEVELS[self.arch] - 1)
        if self.size % step:
            raise ValueError(
                f"head.size {self.size}: expected a multiple of {step} for head.arch {self.arch!r} "
                f"({HEAD_LEVELS[self.arch]} UNet levels halve the mask {HEAD_LEVELS[self.arch] - 1} times)"
            )
        return self


class MaskdiffBaseConfig(StrictConfig):
    """Base stage: the detector on base classes, then the mask head on base instances."""

    split: str = Field("train", description="Split the base stage trains on.")
    detector_steps: int = Field(110000, ge=1, le=10_000_000, description="Detector SGD steps (TFA COCO: 110k).")
    detector_lr: float = Field(0.02, gt=0, le=10, description="Detector SGD learning rate (TFA: 0.02 at batch 16).")
    head_steps: int = Field(100000, ge=1, le=10_000_000, description="Mask-head AdamW steps.")
    head_lr: float = Field(1e-4, gt=0, le=1, description="Mask-head AdamW learning rate (paper: 1e-4).")
    batch_size: int = Field(16, ge=1, le=256, description="Images (detector) or instances (head) per step.")
    head_batch_size: int | None = Field(
        None, ge=1, le=256, description="Instances per mask-head step (paper's supplement: 8); default: batch_size."
    )
    seed: Seed = Field(0, description="Seed of initialisation and sampling order.")

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return drop_defaults(self, handler(self), ("head_batch_size",))


class MaskdiffFinetuneConfig(StrictConfig):
    """K-shot stage: surgery, cosine classifier, last-layer fine-tuning and mask head on the balanced K-shot set."""

    shots: int = Field(5, description="K instances per class (TFA: 1, 2, 3, 5, 10, 30).")
    data_seed: int = Field(0, ge=0, le=9, description="TFA data seed of the K-shot set (0-9).")
    detector_steps: int = Field(80000, ge=1, le=10_000_000, description="Fine-tuning steps (TFA COCO 5-shot: 80k).")
    detector_lr: float = Field(0.001, gt=0, le=10, description="Fine-tuning learning rate (TFA: 0.001).")
    head_steps: int = Field(10000, ge=1, le=10_000_000, description="Mask-head steps on the K-shot set.")
    head_lr: float = Field(1e-4, gt=0, le=1)
    batch_size: int = Field(16, ge=1, le=256)
    head_batch_size: int | None = Field(None, ge=1, le=256, description="As base.head_batch_size.")
    schedule: Literal["fixed", "tfa"] = Field(
        "fixed",
        description="fixed: detector_steps at a constant lr; tfa: TFA's iterations for finetune.shots (1-shot 16k, "
        "2: 32k, 3: 48k, 5: 80k, 10: 160k, 30: 240k) with the lr x0.1 at 90 %, detector_steps then unused.",
    )
    synthetic_runs: list[PathText] = Field(
        default_factory=list,
        description="maskforge runs whose novel-class samples add K-shot instances (connected components of the "
        "class mask).",
    )

    @field_validator("synthetic_runs")
    @classmethod
    def _distinct_runs(cls, runs: list[str]) -> list[str]:
        return distinct_runs(runs, "finetune.synthetic_runs")

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: int) -> int:
        if v not in TFA_SHOTS:
            raise ValueError(f"finetune.shots must be one of {TFA_SHOTS} (TFA's settings)")
        return v

    def detector_iters(self) -> int:
        """Return the K-shot detector's steps: detector_steps, or TFA's iterations for `shots` (schedule tfa)."""
        return TFA_FINETUNE_ITERS[self.shots] if self.schedule == "tfa" else self.detector_steps

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return drop_defaults(self, handler(self), ("head_batch_size", "schedule"))


#: eval.split of the COCO -> VOC evaluation (the paper's second table): VOC2012's val list, 20 VOC = novel classes.
VOC_SPLIT = "voc2012-val"


class MaskdiffTfaConfig(StrictConfig):
    """TFA's benchmark (split: tfa): image lists and where the K-shot sets come from."""

    minival: Literal["instances_minival2014", "val2017"] = Field(
        "instances_minival2014",
        description="File giving the 5k minival image ids under dataset.root/annotations/: instances_minival2014.json "
        "or instances_val2017.json (the same images).",
    )
    seed_dir: PathText | None = Field(
        None, description="TFA's cocosplit/ folder of K-shot seed files; default: dataset.root/cocosplit."
    )
    kshot: Literal["auto", "tfa-files", "maskforge-draw"] = Field(
        "auto",
        description="K-shot sets: TFA's seed files when on disk (auto), required (tfa-files), or maskforge's own "
        "balanced draw (maskforge-draw). Rows record which.",
    )


class MaskdiffEvalConfig(StrictConfig):
    """COCO AP evaluation on the fold's split: segm and bbox, base and novel, mean and std over sampling seeds."""

    split: str = Field(
        "val", description=f"Split evaluated (split tfa: minival, or {VOC_SPLIT} for COCO -> VOC on eval.voc_root)."
    )
    voc_root: PathText | None = Field(
        None, description=f"VOC2012 folder (or its parent) for eval.split {VOC_SPLIT}: JPEGImages, SegmentationObject."
    )
    max_images: int | None = Field(None, ge=1, le=10_000_000, description="Only the first N images (sorted ids).")
    sampling_seeds: int = Field(10, ge=1, le=100, description="Mask samplings, each its own seed (paper: 10).")
    score_threshold: float = Field(0.05, ge=0, lt=1, description="Detections kept above this score.")
    batch_images: int = Field(8, ge=1, le=256, description="Images whose detections are sampled in one call.")
    results_dir: PathText = Field("results", description="Folder of the Parquet benchmark table.")

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return drop_defaults(self, handler(self), ("voc_root",))


class MaskdiffConfig(HashedConfig):
    """The whole configuration of MaskDiff training and evaluation."""

    RUN_FIELDS = (("finetune", "synthetic_runs"),)

    split: Literal["coco20i", "tfa"] = Field(
        "coco20i",
        description="Class split: coco20i (dataset.fold's COCO-20i fold, or the toy world's) or tfa (TFA's: the 20 "
        "VOC classes novel, 60 base, no fold; trainval35k / minival, K-shot sets from TFA's seed files).",
    )
    tfa: MaskdiffTfaConfig = MaskdiffTfaConfig()
    run: MaskdiffRunConfig = MaskdiffRunConfig()
    dataset: DatasetConfig = DatasetConfig()
    detector: MaskdiffDetectorConfig = MaskdiffDetectorConfig()
    head: MaskdiffHeadConfig = MaskdiffHeadConfig()
    base: MaskdiffBaseConfig = MaskdiffBaseConfig()
    finetune: MaskdiffFinetuneConfig = MaskdiffFinetuneConfig()
    eval: MaskdiffEvalConfig = MaskdiffEvalConfig()

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return drop_defaults(self, handler(self), ("split", "tfa"))

    @model_validator(mode="after")
    def _tfa_benchmark(self) -> "MaskdiffConfig":
        if self.eval.split == VOC_SPLIT and (self.split != "tfa" or not self.eval.voc_root):
            raise ValueError(
                f"eval.split {VOC_SPLIT} (COCO -> VOC) needs split: tfa (VOC's classes are its novel ones) and "
                "eval.voc_root (the VOC2012 folder)"
            )
        if self.eval.voc_root and self.eval.split != VOC_SPLIT:
            raise ValueError(f"eval.voc_root is read only with eval.split {VOC_SPLIT}; remove it or set that split")
        if self.split != "tfa":
            if self.tfa != MaskdiffTfaConfig():
                raise ValueError("the tfa section applies to split: tfa only; remove it or set split: tfa")
            return self
        d = self.dataset
        if d.name != "coco" or d.coco_layout not in (None, "instances2014"):
            raise ValueError(
                f"split tfa is TFA's COCO 2014 benchmark: dataset.name must be coco with coco_layout instances2014 "
                f"(or unset), got {d.name} / {d.coco_layout}"
            )
        if d.fold != 0:
            raise ValueError(f"split tfa has no fold axis: dataset.fold must be 0, got {d.fold}")
        if self.base.split != "trainval35k" or self.eval.split not in ("minival", VOC_SPLIT):
            raise ValueError(
                f"split tfa trains on trainval35k and evaluates on minival (or {VOC_SPLIT}): base.split "
                f"{self.base.split!r}, eval.split {self.eval.split!r}"
            )
        return self

    def seed_dir(self) -> str | None:
        """Return TFA's cocosplit/ folder: tfa.seed_dir, else dataset.root/cocosplit (split tfa only)."""
        if self.split != "tfa":
            return None
        return self.tfa.seed_dir or join(self.dataset.root, "cocosplit")

    def _digest(self, *sections: str, **extra) -> str:
        data = self.resolved()
        for key in SAMPLING_FIELDS:  # sampling settings change evaluation, never the trained weights
            data["head"].pop(key)
        benchmark = {k: data[k] for k in ("split", "tfa") if k in data}  # absent for coco20i: names unchanged
        keep = {"run": {"name": data["run"]["name"]}, **benchmark, **{k: data[k] for k in sections}, **extra}
        return digest(keep)

    def base_dir(self) -> str:
        """Return the base stage folder: OUT_DIR/NAME-base-kK-HASH12 (dataset, detector, head, base sections and K:
        the mask head takes K support crops, so its input width depends on K)."""
        k = self.finetune.shots
        digest = self._digest("dataset", "detector", "head", "base", shots=k)[:12]
        return join(self.run.out_dir, f"{self.run.name}-base-k{k}-{digest}")

    def finetune_dir(self) -> str:
        """Return the K-shot stage folder: OUT_DIR/NAME-kK-sSEED-HASH12 (the base sections plus finetune)."""
        f = self.finetune
        extra = {"kshot_source": self.kshot_source()} if self.split == "tfa" else {}
        digest = self._digest("dataset", "detector", "head", "base", "finetune", **extra)[:12]
        return join(self.run.out_dir, f"{self.run.name}-k{f.shots}-s{f.data_seed}-{digest}")

    def kshot_source(self) -> str:
        """Return where the K-shot set comes from: "tfa-files" (split tfa, TFA's seed files on disk, or required by
        tfa.kshot) or "maskforge-draw" (eval/fsis_protocol.py:kshot_instances). Part of the K-shot stage's name, so
        copying the seed files in later trains a new stage instead of reusing the drawn one."""
        if self.split != "tfa" or self.tfa.kshot == "maskforge-draw":
            return "maskforge-draw"
        if self.tfa.kshot == "tfa-files":
            return "tfa-files"
        names = {i + 1: name for i, name in enumerate(COCO_CLASSES)}
        present = tfa_files_present(self.seed_dir(), names, self.finetune.shots, self.finetune.data_seed)
        return "tfa-files" if present else "maskforge-draw"


def parse_maskdiff_config(data: dict, source: str = "<config>") -> MaskdiffConfig:
    """Validate a MaskDiff config mapping; a ConfigError names `source`, each bad field and what was expected."""
    return validate_model(MaskdiffConfig, data, source)


def load_maskdiff_config(path: str | Path, overrides: dict | None = None) -> MaskdiffConfig:
    """Load and validate a MaskDiff YAML config, applying dotted-key overrides like {"base.head_steps": 10}."""
    return parse_maskdiff_config(read_yaml(path, overrides), source=str(path))
