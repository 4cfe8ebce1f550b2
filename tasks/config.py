"""The typed configuration of a generation run (pydantic v2), loaded from YAML and validated before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.eval.seeds import derive_seed
from maskforge.models.diffusion_config import SPEED_FIELDS, DiffusionConfig
from maskforge.storage.yaml_config import PathText, Seed, StrictConfig, digest, read_yaml, validate_model


class ShotsConfig(StrictConfig):
    """Few-shot support sampling per novel class."""

    k: int = Field(1, ge=1, le=50, description="Real shots (image, mask) per novel class.")
    split: str = Field("train", description="Dataset split the shots are drawn from.")
    seed: Seed = Field(0, description="Shot-sampling seed; with (dataset, fold, class, k) it fixes the shots.")


class BaseSetConfig(StrictConfig):
    """The base set D^B (images with no novel pixel) and its class-balanced subset used for copy-paste."""

    split: str = Field("train", description="Dataset split the base images come from.")
    subset_size: int = Field(500, ge=1, le=100_000, description="Images in the class-balanced base subset.")


class CopyPasteConfig(StrictConfig):
    """Copy-paste composition (AlignDiff §3.5 / D.2): objects pasted onto base images."""

    min_objects: int = Field(1, ge=1, le=20)
    max_objects: int = Field(3, ge=1, le=20)
    scale_min: float = Field(0.1, gt=0)
    scale_max: float = Field(2.0, gt=0, le=10)

    @model_validator(mode="after")
    def _ranges(self) -> "CopyPasteConfig":
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})")
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must be <= scale_max ({self.scale_max})")
        return self


class GenerationConfig(StrictConfig):
    """What to produce per novel class."""

    samples_per_class: int = Field(
        8, ge=1, le=100_000, description="Composed scenes written per novel class and source."
    )
    sources: tuple[Literal["real", "synthetic"], ...] = Field(
        ("real",),
        min_length=1,
        description="Object sources: 'real' = objects cut from the real shots; 'synthetic' = objects cut from the "
        "class's diffusion samples (after refinement when configured); needs a diffusion section.",
    )
    classes: tuple[str, ...] | None = Field(
        None, description="Restrict to these novel classes (names or ids); default: every novel class of the fold."
    )


class ShardsConfig(StrictConfig):
    """WebDataset shard limits and encoding."""

    max_count: int = Field(1000, ge=1, le=1_000_000, description="Samples per shard at most.")
    max_bytes: int = Field(500_000_000, ge=1024, le=10_000_000_000, description="Payload bytes per shard at most.")
    jpeg_quality: int = Field(95, ge=50, le=100)


class RefinementConfig(StrictConfig):
    """Semi-supervised refinement of generated masks (AlignDiff Alg. 1) and the out-of-distribution filter (D.4)."""

    checkpoint: PathText = Field(
        ..., description="HSNet checkpoint: ours (.safetensors from train_hsnet) or the authors' .pt."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1, le=1024, description="Images per HSNet forward pass.")
    alpha: float = Field(
        0.8, gt=0, le=1, description="Consensus IoU at which a coarse mask is accepted (AlignDiff: 0.8)."
    )
    vote_threshold: float = Field(0.5, gt=0, le=1, description="k-shot vote cut of the pseudo-labels (AlignDiff: 0.5).")
    max_added: int = Field(
        4,
        ge=0,
        le=1000,
        description="Accepted samples (top by consensus IoU) joining the real shots when re-conditioning.",
    )
    ood_filter: bool = Field(
        True, description="Drop text/embedding samples whose mask fails to segment the real shots."
    )
    beta: float = Field(
        0.5, ge=0, le=1, description="OOD filter: keep a sample if its 1-shot IoU on the real shots >= beta."
    )


class RunConfig(StrictConfig):
    """Run identity and output location."""

    name: str = Field("run", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Run name; lower case, digits, '-', '_'.")
    seed: Seed = Field(0, description="Run seed; each sample's seed derives from (run seed, class, index).")
    round: int = Field(
        0,
        ge=0,
        le=99_999_999,
        description="Generation round: a nightly deployment passes its date (YYYYMMDD), so each night renders new "
        "samples while a rerun of a round is the same run. 0 (the CLI's default) leaves hash and seeds as before.",
    )
    out_dir: PathText = Field("runs", description="Parent folder (path or fsspec URL, s3://bucket/runs) of runs.")
    # exclude and repr=False: credentials given here never reach config.yaml, the config hash, Prefect's stored flow
    # parameters or a log line; pickling (to Dask workers) keeps them, so every worker opens the store alike
    storage_options: dict[str, Any] | None = Field(
        None,
        exclude=True,
        repr=False,
        description="fsspec options of out_dir's store (s3fs: key, secret, client_kwargs.endpoint_url, ...); "
        "default: the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...). Never stored with the run.",
    )
    retries: int = Field(1, ge=0, le=10, description="Retries of a failed per-class task (transient failures).")
    retry_delay_s: float = Field(10.0, ge=0, le=3600, description="Seconds between retries.")

    def data_seed(self) -> int:
        """The seed every sample, shot and subset draw of the run derives from: the run seed, joined with the round
        from round 1 on (round 0 is the run seed itself, so runs made before rounds existed keep their bytes)."""
        return self.seed if self.round == 0 else derive_seed("round", self.seed, self.round)


#: Run fields that change how a run executes, not what it writes: left out of the config hash.
OPERATIONAL_FIELDS = ("out_dir", "retries", "retry_delay_s")


class MaskforgeConfig(StrictConfig):
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
            raise ValueError(
                "generation.sources: 'synthetic' needs a 'diffusion' section (objects are cut from its samples)"
            )
        return self

    def stored(self) -> dict:
        """Return the config a run folder stores as config.yaml: the resolved config without run.out_dir. Where a
        run lies is where it is found: a run copied to another disk or bucket keeps a true config and a valid marker,
        and the same config run into two places writes byte-identical folders (markers included)."""
        data = self.resolved()
        data["run"].pop("out_dir")
        return data

    def hash(self) -> str:
        """Return the resolved config's sha256, leaving out output location, retries and the diffusion speed settings
        (compile, channels-last, fused projections): they don't change the data beyond float rounding."""
        data = self.resolved()
        for name in OPERATIONAL_FIELDS:
            data["run"].pop(name)
        if data["run"]["round"] == 0:  # round 0 hashes as before rounds existed: same run folder, same bytes
            data["run"].pop("round")
        for name in SPEED_FIELDS if data["diffusion"] is not None else ():
            data["diffusion"].pop(name)
        return digest(data)


def parse_config(data: dict, source: str = "<config>") -> MaskforgeConfig:
    """Validate a config mapping; a ConfigError names `source`, each bad field and what was expected."""
    return validate_model(MaskforgeConfig, data, source)


def load_config(path: str | Path, overrides: dict | None = None) -> MaskforgeConfig:
    """Load and validate a YAML config file, applying dotted-key overrides like {"run.out_dir": "runs"}."""
    return parse_config(read_yaml(path, overrides), source=str(path))
