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
    sources: tuple[Literal["real"], ...] = Field(
        ("real",), min_length=1, description="Object sources: 'real' = objects cut from the real shots."
    )
    classes: tuple[str, ...] | None = Field(
        None, description="Restrict to these novel classes (names or ids); default: every novel class of the fold."
    )


class ShardsConfig(_Strict):
    """WebDataset shard limits and encoding."""

    max_count: int = Field(1000, ge=1, description="Samples per shard at most.")
    max_bytes: int = Field(500_000_000, ge=1024, description="Payload bytes per shard at most.")
    jpeg_quality: int = Field(95, ge=50, le=100)


class RunConfig(_Strict):
    """Run identity and output location."""

    name: str = Field("run", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Run name; lower case, digits, '-', '_'.")
    seed: int = Field(0, description="Run seed; each sample's seed derives from (run seed, class, index).")
    out_dir: str = Field("runs", description="Parent folder (path or fsspec URL) of run folders.")


class MaskforgeConfig(_Strict):
    """The whole configuration of one generation run."""

    run: RunConfig = RunConfig()
    dataset: DatasetConfig = DatasetConfig()
    shots: ShotsConfig = ShotsConfig()
    base: BaseSetConfig = BaseSetConfig()
    generation: GenerationConfig = GenerationConfig()
    copy_paste: CopyPasteConfig = CopyPasteConfig()
    shards: ShardsConfig = ShardsConfig()

    def resolved(self) -> dict:
        """Return the fully resolved config as plain JSON-compatible data (every default filled in)."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Return the sha256 of the resolved config, output location excluded (it does not change the data)."""
        data = self.resolved()
        data["run"].pop("out_dir")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} error(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  field '{loc}': {e['msg']}{got_text}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> MaskforgeConfig:
    """Validate a config mapping; a ConfigError names `source`, each bad field and what was expected."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return MaskforgeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> MaskforgeConfig:
    """Load and validate a YAML config file, applying dotted-key overrides like {"run.out_dir": "runs"}."""
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
    return parse_config(data, source=str(path))
