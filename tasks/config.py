"""The one typed maskforge configuration (pydantic v2), loaded from YAML and validated before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """An invalid configuration: the message names the file, the field and what was expected."""


class _Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def resolved(self) -> dict:
        """Return the fully resolved config as plain JSON-compatible data (every default filled in)."""
        return self.model_dump(mode="json")


class ToyConfig(_Strict):
    """The procedural toy world (the embedded default dataset)."""

    seed: int = Field(0, description="World seed: the same seed renders the same images.")
    image_size: int = Field(96, ge=32, le=1024, description="Square image side in pixels.")
    n_train: int = Field(400, ge=8, description="Images in the train split.")
    n_val: int = Field(100, ge=4, description="Images in the val split.")


class DatasetConfig(_Strict):
    """Which dataset and fold to read."""

    name: Literal["toy", "pascal", "coco", "fss"] = "toy"
    root: str | None = Field(None, description="Dataset root on disk; required for pascal, coco and fss.")
    fold: int = Field(0, ge=0, le=3, description="Fold index: PASCAL-5i, COCO-20i and toy have 0-3; FSS-1000 has 0.")
    coco_fold_mode: Literal["interleaved", "contiguous"] = Field(
        "interleaved", description="COCO-20i fold tables: interleaved (HSNet, default) or contiguous (PANet-style)."
    )
    toy: ToyConfig = ToyConfig()

    @model_validator(mode="after")
    def _root_and_fold(self) -> "DatasetConfig":
        if self.name != "toy" and not self.root:
            raise ValueError(f"dataset.root is required for dataset {self.name!r} (a directory on disk)")
        if self.name == "toy" and self.root:
            raise ValueError("dataset.root must be empty for the toy dataset (it is rendered in-process)")
        if self.name == "fss" and self.fold != 0:
            raise ValueError(f"FSS-1000 has one fold (0: the 240 test classes are novel); got fold {self.fold}")
        return self


class ShotsConfig(_Strict):
    """Few-shot support sampling per novel class."""

    k: int = Field(1, ge=1, le=50, description="Real shots (image, mask) per novel class.")
    split: str = Field("train", description="Dataset split the shots are drawn from.")
    seed: int = Field(0, description="Shot-sampling seed; with (dataset, fold, class, k) it fixes the shots.")


class BaseSetConfig(_Strict):
    """The base set D^B (images with no novel pixel) and its class-balanced subset used for copy-paste."""

    split: str = Field("train", description="Dataset split the base images come from.")
    subset_size: int = Field(500, ge=1, description="Images in the class-balanced base subset.")


class CopyPasteConfig(_Strict):
    """Copy-paste composition (AlignDiff §3.5 / D.2): objects pasted onto base images."""

    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(3, ge=1)
    scale_min: float = Field(0.1, gt=0)
    scale_max: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ranges(self) -> "CopyPasteConfig":
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})")
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must be <= scale_max ({self.scale_max})")
        return self


class GenerationConfig(_Strict):
    """What to produce per novel class."""

    samples_per_class: int = Field(8, ge=1, description="Composed scenes written per novel class and source.")
    sources: tuple[Literal["real", "synthetic"], ...] = Field(
        ("real",), min_length=1,
        description="Object sources: 'real' = objects cut from the real shots; 'synthetic' = objects cut from the "
        "class's diffusion samples (after refinement when configured); needs a diffusion section.",
    )
    classes: tuple[str, ...] | None = Field(
        None, description="Restrict to these novel classes (names or ids); default: every novel class of the fold."
    )


class ShardsConfig(_Strict):
    """WebDataset shard limits and encoding."""

    max_count: int = Field(1000, ge=1, description="Samples per shard at most.")
    max_bytes: int = Field(500_000_000, ge=1024, description="Payload bytes per shard at most.")
    jpeg_quality: int = Field(95, ge=50, le=100)


#: DifFSS's prompt and negative prompt for ControlNet generation (ControlNet4FSS/FSSpregenerate.py).
DIFFSS_PROMPT = "a real shot photo of {class}, best quality, extremely detailed"
DIFFSS_NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, artwork"
)
#: ControlNet conditions: the support mask, HED edges inside the dilated foreground, and their binarised scribble.
CONTROL_KINDS = ("mask", "hed", "scribble")


def _check_template(template: str, field: str, *placeholders: str) -> str:
    """Raise ValueError unless a prompt template holds each placeholder exactly once."""
    for name in placeholders:
        if template.count("{" + name + "}") != 1:
            raise ValueError(
                f"{field}: template {template!r} must contain {{{name}}} exactly once "
                "(the class word must appear in the prompt for its cross-attention map)"
            )
    return template


class XattnConfig(_Strict):
    """Cross-attention coarse masks: which layers and steps are accumulated, and how the map is cut."""

    factors: tuple[int, ...] = Field(
        (1, 2, 4), min_length=1,
        description="Latent downsampling factors whose cross-attention layers are captured (SD at 512 px: 1 = 64x64, "
        "2 = 32x32, 4 = 16x16, 8 = 8x8). A factor with no cross-attention layer in the UNet is an error.",
    )
    step_range: tuple[float, float] = Field(
        (0.0, 1.0), description="Fraction of the denoising steps captured, [start, end): (0, 1) = every step."
    )
    threshold: float | Literal["otsu"] = Field(
        0.4, description="Cut of the max-normalised soft map (AlignDiff: 0.4), or 'otsu' for Otsu's threshold."
    )
    store_soft_map: bool = Field(True, description="Store the soft map as KEY.xattn.npy (float16, image size).")

    @model_validator(mode="after")
    def _ranges(self) -> "XattnConfig":
        if any(f < 1 or f & (f - 1) for f in self.factors) or len(set(self.factors)) != len(self.factors):
            raise ValueError(f"factors must be distinct powers of two >= 1, got {list(self.factors)}")
        start, end = self.step_range
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"step_range must satisfy 0 <= start < end <= 1, got {list(self.step_range)}")
        if isinstance(self.threshold, float) and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) or 'otsu', got {self.threshold}")
        return self


class TextModeConfig(_Strict):
    """Text prompts: "a photo of a {class}" (AlignDiff's plain-text half)."""

    samples: int = Field(4, ge=0, description="Text-prompted images per novel class.")
    template: str = Field("a photo of a {class}", description="Prompt template; {class} is the class name.")
    negative_prompt: str = ""
    guidance_scale: float = Field(7.5, ge=1.0, description="Classifier-free guidance scale (AlignDiff: 7.5).")

    @model_validator(mode="after")
    def _template(self) -> "TextModeConfig":
        _check_template(self.template, "template", "class")
        return self


class EmbeddingModeConfig(_Strict):
    """Embedding prompts "a photo of a <v_i> {class}" with instance embeddings learned from each real shot.

    The embeddings come from normalized masked textual inversion (AlignDiff §3.4, Eq. 3) and live in a bank keyed
    by (dataset, fold, class, shot) and by everything that changes them, so reruns reuse them.
    """

    samples: int = Field(
        4, ge=0, description="Embedding-prompted images per class, shots in turn (default: as many as text prompts)."
    )
    template: str = Field("a photo of a {token} {class}", description="Template; {token} is the learned token.")
    bank: str | None = Field(None, description="Embedding bank folder; default OUT_DIR/embeddings (shared by runs).")
    initializer: str = Field("good", description="Word whose embedding starts v* (AlignDiff: 'good'); one token.")
    steps: int = Field(500, ge=1, description="Optimisation steps per embedding (AlignDiff: 500).")
    batch_size: int = Field(4, ge=1, description="Noised copies of the shot per step (AlignDiff: 4).")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate (AlignDiff: 5e-4).")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay on v* (AlignDiff: 1e-2).")
    bg_lambda: float = Field(0.6, ge=0, description="Weight of the background term of Eq. 3 (AlignDiff: 0.6).")
    mask_rule: Literal["area", "nearest"] = Field(
        "area", description="Mask to latent grid: area fraction > mask_cut, or nearest-neighbour sampling."
    )
    mask_cut: float = Field(0.5, gt=0, lt=1, description="Foreground cut of the area fraction (mask_rule 'area').")
    flip: bool = Field(True, description="Random horizontal flips of the shot (and its mask) per batch item.")
    early_stop_patience: int = Field(
        0, ge=0, description="Stop when the smoothed loss has not improved for this many steps (0 = off)."
    )
    image_size: int | None = Field(None, ge=16, description="Short side the shot is trained at; default diffusion.image_size.")

    @model_validator(mode="after")
    def _template(self) -> "EmbeddingModeConfig":
        _check_template(self.template, "template", "token", "class")
        if self.template.index("{token}") > self.template.index("{class}"):
            raise ValueError(f"template {self.template!r}: {{token}} must come before {{class}} (v* is an adjective)")
        return self


class ControlNetModeConfig(_Strict):
    """ControlNet images conditioned on each real shot's mask, HED edges or scribble (DifFSS)."""

    conditions: tuple[Literal["mask", "hed", "scribble"], ...] = Field(
        (), description="Conditions to generate; each needs its ControlNet in `models`."
    )
    per_shot: int = Field(4, ge=1, description="Images per (real shot, condition) (DifFSS: 4).")
    models: dict[Literal["mask", "hed", "scribble"], str] = Field(
        default_factory=dict, description="ControlNet per condition: a local diffusers folder or a cached hub id."
    )
    hed_annotator: str | None = Field(
        None, description="Folder holding ControlNetHED.pth (controlnet-aux's HED); needed for hed and scribble."
    )
    prompt: str = Field(DIFFSS_PROMPT, description="Prompt template; {class} is the class name.")
    negative_prompt: str = DIFFSS_NEGATIVE_PROMPT
    guidance_scale: float = Field(9.0, ge=1.0, description="Classifier-free guidance scale (DifFSS: 9).")
    conditioning_scale: float = Field(1.0, ge=0.0, description="ControlNet strength (DifFSS: 1.0).")
    mask_color: tuple[int, int, int] = Field(
        (255, 255, 255), description="RGB of the foreground in the mask condition (background is black)."
    )
    hed_dilation: int = Field(14, ge=1, description="Elliptical kernel size dilating the foreground that keeps edges.")
    label: Literal["support", "xattn"] = Field(
        "support", description="Label map written: the support mask it was conditioned on (DifFSS), or the xattn mask."
    )

    @model_validator(mode="after")
    def _models(self) -> "ControlNetModeConfig":
        _check_template(self.prompt, "prompt", "class")
        missing = [c for c in self.conditions if c not in self.models]
        if missing:
            raise ValueError(f"conditions {list(missing)} have no ControlNet in models (a folder per condition)")
        if {"hed", "scribble"} & set(self.conditions) and not self.hed_annotator:
            raise ValueError("hed_annotator is required for the hed and scribble conditions (a folder with ControlNetHED.pth)")
        return self


class DiffusionConfig(_Strict):
    """The diffusion stage: Stable Diffusion and ControlNet images with cross-attention coarse masks."""

    model: str = Field(..., description="Stable Diffusion: a local diffusers-format folder, or a hub id already cached.")
    revision: str | None = Field(None, description="Hub revision (cached ids only); recorded in provenance.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on GPU, float32 on CPU."
    )
    scheduler: Literal["ddim", "dpm-solver"] = "ddim"
    steps: int = Field(50, ge=1, le=1000, description="Denoising steps (AlignDiff: 50).")
    image_size: int = Field(512, ge=16, description="Image side (text prompts) or short side (ControlNet, aspect kept).")
    batch_size: int = Field(4, ge=1, description="Images per pipeline call.")
    text: TextModeConfig = TextModeConfig()
    embedding: EmbeddingModeConfig = EmbeddingModeConfig()
    controlnet: ControlNetModeConfig = ControlNetModeConfig()
    xattn: XattnConfig = XattnConfig()


class RefinementConfig(_Strict):
    """Semi-supervised refinement of generated masks (AlignDiff Alg. 1) and the out-of-distribution filter (D.4)."""

    checkpoint: str = Field(..., description="HSNet checkpoint: ours (.safetensors from train_hsnet) or the authors' .pt.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1, description="Images per HSNet forward pass.")
    alpha: float = Field(0.8, gt=0, le=1, description="Consensus IoU at which a coarse mask is accepted (AlignDiff: 0.8).")
    vote_threshold: float = Field(0.5, gt=0, le=1, description="k-shot vote cut of the pseudo-labels (AlignDiff: 0.5).")
    max_added: int = Field(
        4, ge=0, description="Accepted samples (top by consensus IoU) joining the real shots when re-conditioning."
    )
    ood_filter: bool = Field(True, description="Drop text/embedding samples whose mask fails to segment the real shots.")
    beta: float = Field(0.5, ge=0, le=1, description="OOD filter: keep a sample if its 1-shot IoU on the real shots >= beta.")


class RunConfig(_Strict):
    """Run identity and output location."""

    name: str = Field("run", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Run name; lower case, digits, '-', '_'.")
    seed: int = Field(0, description="Run seed; each sample's seed derives from (run seed, class, index).")
    out_dir: str = Field("runs", description="Parent folder (path or fsspec URL) of run folders.")
    retries: int = Field(1, ge=0, description="Retries of a failed per-class task (transient failures).")
    retry_delay_s: float = Field(10.0, ge=0, description="Seconds between retries.")


#: Run fields that change how a run executes, not what it writes: left out of the config hash.
OPERATIONAL_FIELDS = ("out_dir", "retries", "retry_delay_s")


class MaskforgeConfig(_Strict):
    """The whole configuration of one generation run."""

    run: RunConfig = RunConfig()
    dataset: DatasetConfig = DatasetConfig()
    shots: ShotsConfig = ShotsConfig()
    base: BaseSetConfig = BaseSetConfig()
    generation: GenerationConfig = GenerationConfig()
    copy_paste: CopyPasteConfig = CopyPasteConfig()
    shards: ShardsConfig = ShardsConfig()
    diffusion: DiffusionConfig | None = Field(None, description="The diffusion stage; absent = copy-paste only.")
    refinement: RefinementConfig | None = Field(
        None, description="Refine the diffusion samples' masks with HSNet and filter OOD samples; needs diffusion."
    )

    @model_validator(mode="after")
    def _stages_need_diffusion(self) -> "MaskforgeConfig":
        if self.refinement is not None and self.diffusion is None:
            raise ValueError("refinement: needs a 'diffusion' section (it refines the diffusion samples' masks)")
        if "synthetic" in self.generation.sources and self.diffusion is None:
            raise ValueError("generation.sources: 'synthetic' needs a 'diffusion' section (objects are cut from its samples)")
        return self

    def hash(self) -> str:
        """Return the sha256 of the resolved config; output location and retry settings are left out (they do not
        change the data)."""
        data = self.resolved()
        for name in OPERATIONAL_FIELDS:
            data["run"].pop(name)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} error(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  field '{loc}': {e['msg']}{got_text}")
    return "\n".join(lines)


def validate_model(model: type[BaseModel], data: dict, source: str):
    """Validate a mapping into a pydantic model; a ConfigError names `source`, each bad field and what was expected."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def read_yaml(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config file as a mapping and apply dotted-key overrides like {"run.out_dir": "runs"}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def parse_config(data: dict, source: str = "<config>") -> MaskforgeConfig:
    """Validate a config mapping; a ConfigError names `source`, each bad field and what was expected."""
    return validate_model(MaskforgeConfig, data, source)


def load_config(path: str | Path, overrides: dict | None = None) -> MaskforgeConfig:
    """Load and validate a YAML config file, applying dotted-key overrides like {"run.out_dir": "runs"}."""
    return parse_config(read_yaml(path, overrides), source=str(path))
