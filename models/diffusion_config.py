"""Config sections of the diffusion stage: Stable Diffusion text and embedding prompts, ControlNet, xattn masks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from maskforge.storage.yaml_config import PathText, StrictConfig

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


class XattnConfig(StrictConfig):
    """Cross-attention coarse masks: which layers and steps are accumulated, and how the map is cut."""

    factors: tuple[int, ...] = Field(
        (1, 2, 4),
        min_length=1,
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


class TextModeConfig(StrictConfig):
    """Text prompts: "a photo of a {class}" (AlignDiff's plain-text half)."""

    samples: int = Field(4, ge=0, le=100_000, description="Text-prompted images per novel class.")
    template: str = Field("a photo of a {class}", description="Prompt template; {class} is the class name.")
    negative_prompt: str = ""
    guidance_scale: float = Field(7.5, ge=1.0, description="Classifier-free guidance scale (AlignDiff: 7.5).")

    @model_validator(mode="after")
    def _template(self) -> "TextModeConfig":
        _check_template(self.template, "template", "class")
        return self


class EmbeddingModeConfig(StrictConfig):
    """Embedding prompts "a photo of a <v_i> {class}" with instance embeddings learned from each real shot.

    The embeddings come from normalized masked textual inversion (AlignDiff §3.4, Eq. 3) and live in a bank keyed
    by (dataset, fold, class, shot) and by everything that changes them, so reruns reuse them.
    """

    samples: int = Field(
        4,
        ge=0,
        le=100_000,
        description="Embedding-prompted images per class, shots in turn (default: as many as text prompts).",
    )
    template: str = Field("a photo of a {token} {class}", description="Template; {token} is the learned token.")
    bank: PathText | None = Field(
        None, description="Embedding bank folder; default OUT_DIR/embeddings (shared by runs)."
    )
    initializer: str = Field("good", description="Word whose embedding starts v* (AlignDiff: 'good'); one token.")
    steps: int = Field(500, ge=1, le=100_000, description="Optimisation steps per embedding (AlignDiff: 500).")
    batch_size: int = Field(4, ge=1, le=256, description="Noised copies of the shot per step (AlignDiff: 4).")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate (AlignDiff: 5e-4).")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay on v* (AlignDiff: 1e-2).")
    bg_lambda: float = Field(0.6, ge=0, description="Weight of the background term of Eq. 3 (AlignDiff: 0.6).")
    mask_rule: Literal["area", "nearest"] = Field(
        "area", description="Mask to latent grid: area fraction > mask_cut, or nearest-neighbour sampling."
    )
    mask_cut: float = Field(0.5, gt=0, lt=1, description="Foreground cut of the area fraction (mask_rule 'area').")
    flip: bool = Field(True, description="Random horizontal flips of the shot (and its mask) per batch item.")
    early_stop_patience: int = Field(
        0, ge=0, le=1_000_000, description="Stop when the smoothed loss has not improved for this many steps (0 = off)."
    )
    image_size: int | None = Field(
        None, ge=16, le=4096, description="Short side the shot is trained at; default diffusion.image_size."
    )

    @model_validator(mode="after")
    def _template(self) -> "EmbeddingModeConfig":
        _check_template(self.template, "template", "token", "class")
        if self.template.index("{token}") > self.template.index("{class}"):
            raise ValueError(f"template {self.template!r}: {{token}} must come before {{class}} (v* is an adjective)")
        return self


class ControlNetModeConfig(StrictConfig):
    """ControlNet images conditioned on each real shot's mask, HED edges or scribble (DifFSS)."""

    conditions: tuple[Literal["mask", "hed", "scribble"], ...] = Field(
        (), description="Conditions to generate; each needs its ControlNet in `models`."
    )
    per_shot: int = Field(4, ge=1, le=1000, description="Images per (real shot, condition) (DifFSS: 4).")
    models: dict[Literal["mask", "hed", "scribble"], PathText] = Field(
        default_factory=dict, description="ControlNet per condition: a local diffusers folder or a cached hub id."
    )
    hed_annotator: PathText | None = Field(
        None, description="Folder holding ControlNetHED.pth (controlnet-aux's HED); needed for hed and scribble."
    )
    prompt: str = Field(DIFFSS_PROMPT, description="Prompt template; {class} is the class name.")
    negative_prompt: str = DIFFSS_NEGATIVE_PROMPT
    guidance_scale: float = Field(9.0, ge=1.0, description="Classifier-free guidance scale (DifFSS: 9).")
    conditioning_scale: float = Field(1.0, ge=0.0, description="ControlNet strength (DifFSS: 1.0).")
    mask_color: tuple[int, int, int] = Field(
        (255, 255, 255), description="RGB of the foreground in the mask condition (background is black)."
    )
    hed_dilation: int = Field(
        14, ge=1, le=255, description="Elliptical kernel size dilating the foreground that keeps edges."
    )
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
            raise ValueError(
                "hed_annotator is required for the hed and scribble conditions (a folder with ControlNetHED.pth)"
            )
        return self


#: torch.compile modes that capture CUDA graphs (whole denoising steps: apply_speedups marks the step boundaries).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class DiffusionConfig(StrictConfig):
    """The diffusion stage: Stable Diffusion and ControlNet images with cross-attention coarse masks."""

    model: PathText = Field(
        ..., description="Stable Diffusion: a local diffusers-format folder, or a hub id already cached."
    )
    revision: PathText | None = Field(None, description="Hub revision (cached ids only); recorded in provenance.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto = float16 on GPU, float32 on CPU."
    )
    scheduler: Literal["ddim", "dpm-solver"] = "ddim"
    steps: int = Field(50, ge=1, le=1000, description="Denoising steps (AlignDiff: 50).")
    image_size: int = Field(
        512, ge=16, le=4096, description="Image side (text prompts) or short side (ControlNet, aspect kept)."
    )
    batch_size: int = Field(4, ge=1, le=256, description="Images per pipeline call.")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the UNet and ControlNet forward passes (compiled once per process, the first call "
        "pays minutes): auto = on with CUDA, off on CPU. Changes results only by float rounding; not part of the "
        "run identity.",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default",
        description="torch.compile mode: default (fastest to compile), reduce-overhead (CUDA graphs), max-autotune "
        "(kernel search and CUDA graphs: longest compile), max-autotune-no-cudagraphs.",
    )
    compile_scope: Literal["model", "blocks"] = Field(
        "model",
        description="What torch.compile compiles: model = each UNet / ControlNet forward as one graph; blocks = only "
        "their transformer blocks (diffusers' regional compilation: one graph per block shape, reused by every block "
        "of that shape, so less to compile; the convolutions stay eager). blocks needs a compile_mode "
        "without CUDA graphs.",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="Channels-last memory format for UNet, ControlNet and VAE: auto = on with CUDA."
    )
    fuse_qkv: bool | Literal["auto"] = Field(
        "auto",
        description="Fuse each self-attention layer's q, k and v projections into one matmul (cross-attention layers "
        "keep theirs: the capture reads their q and k): auto = on with CUDA.",
    )
    text: TextModeConfig = TextModeConfig()
    embedding: EmbeddingModeConfig = EmbeddingModeConfig()
    controlnet: ControlNetModeConfig = ControlNetModeConfig()
    xattn: XattnConfig = XattnConfig()

    @model_validator(mode="after")
    def _compile_mode(self) -> "DiffusionConfig":
        if self.compile is False and self.compile_mode != "default":
            raise ValueError(f"compile_mode {self.compile_mode!r} needs compile true or 'auto' (compile is false)")
        if self.compile_scope == "blocks" and self.compile_mode in CUDA_GRAPH_MODES:
            raise ValueError(
                f"compile_scope 'blocks' needs compile_mode default or max-autotune-no-cudagraphs, got "
                f"{self.compile_mode!r} (CUDA graphs capture whole steps, not one block)"
            )
        return self


#: DiffusionConfig fields that change how fast images are made, not which images: left out of the run identity.
SPEED_FIELDS = ("compile", "compile_mode", "compile_scope", "channels_last", "fuse_qkv")
