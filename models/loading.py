"""Load Stable Diffusion, ControlNet and HED from local folders (or hub ids already cached); never download."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from maskforge.models.device import resolve_device, resolve_dtype
from maskforge.models.diffusion_config import SPEED_FIELDS, DiffusionConfig
from maskforge.models.speedups import Speedups, apply_speedups, resolve_speedups

#: Weight file names diffusers reads for one model folder, safetensors first.
_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
)
#: Pipeline components that hold weights (others, like the scheduler or tokenizer, only need their files).
_WEIGHTED = {"unet", "vae", "text_encoder", "controlnet"}


class ModelLoadError(FileNotFoundError):
    """A model folder that is missing or incomplete: names the path and what was expected there."""


def resolve_model_path(path_or_id: str, what: str, revision: str | None = None) -> Path:
    """Return a local folder for a model: the path itself, or a hub id's snapshot in the local cache (no download)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{what}: {path} is a file; expected a diffusers-format model folder")
    looks_like_hub_id = path_or_id.count("/") == 1 and not path_or_id.startswith((".", "/", "~"))
    if looks_like_hub_id:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(path_or_id, revision=revision, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError) as err:
            raise ModelLoadError(
                f"{what}: {path_or_id!r} is neither a folder nor a hub id in the local cache "
                f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}); "
                f"maskforge never downloads: copy the model folder to disk and give its path ({err.__class__.__name__})"
            ) from None
    raise ModelLoadError(f"{what}: model folder {path} does not exist (expected a diffusers-format folder)")


def _check_weighted_folder(folder: Path, what: str) -> None:
    """Raise ModelLoadError unless folder holds config.json and a weight file diffusers can read."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{what}: {folder} has no config.json (not a diffusers/transformers model folder)")
    weights = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise ModelLoadError(f"{what}: {folder} has no weights; expected one of {list(_WEIGHT_FILES)}")
    check_weight_file(weights[0], what)


def check_weight_file(file: Path, what: str) -> None:
    """Read a weight file's header (safetensors) or archive index (torch zip), so a truncated or foreign file is an
    error naming it before anything loads; `what` is the config field the file came from."""
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt") as handle:
                next(iter(handle.keys()), None)
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"{what}: {file} is not a readable safetensors file ({err})") from None
    elif not zipfile.is_zipfile(file):
        raise ModelLoadError(f"{what}: {file} is not a readable torch checkpoint (not a zip archive)")


def check_pipeline_folder(folder: Path, what: str = "diffusion.model") -> dict:
    """Check an SD pipeline folder: model_index.json and every component it lists; return the index."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{what}: {folder} has no model_index.json (not a diffusers pipeline folder)")
    try:
        index = json.loads(index_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{what}: {index_file} is not valid JSON ({err})") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"{what}: {index_file} holds a {type(index).__name__}, expected a JSON object")
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise ModelLoadError(f"{what}: component folder {sub} listed in {index_file} is missing")
        if name in _WEIGHTED:
            _check_weighted_folder(sub, what)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not isinstance(index.get(name), list) or index[name][0] is None:
            raise ModelLoadError(
                f"{what}: {index_file} lists no {name!r} component; a Stable Diffusion pipeline needs it"
            )
    return index


def content_id(folder: Path) -> str:
    """Return a short id of a model folder's (or file's) content: sha256 of each file's path, size, first/last MiB."""
    digest = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder) if file != folder else file.name}\0{size}\0".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """Return the (device, dtype) of the diffusion section: auto = CUDA if present; float16 on GPU, float32 on CPU."""
    where = resolve_device(device, "diffusion.device")
    return where, resolve_dtype(dtype, where)


@dataclass
class ModelRef:
    """Where a model came from: the configured id or path, the folder read, and its revision or content id."""

    id: str
    folder: str
    revision: str

    def to_dict(self) -> dict:
        """Return the provenance entry stored with each sample."""
        return {"id": self.id, "revision": self.revision}


@dataclass
class Pipelines:
    """Loaded models for one generation: the SD pipeline, ControlNet pipelines per condition and the HED detector."""

    sd: object
    device: torch.device
    dtype: torch.dtype
    refs: dict[str, ModelRef]
    controlnet: dict[str, object] = field(default_factory=dict)
    hed: object | None = None
    speedups: Speedups | None = None  # channels-last, fused projections, compile (and its time), as applied

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling graphs on first calls so far (0 when nothing is compiled)."""
        return self.speedups.stats.seconds if self.speedups else 0.0

    def compile_report(self) -> str | None:
        """Return a log line when graphs were compiled since the last report (a stage prints it once), else None."""
        line = self.speedups.stats.unreported() if self.speedups else None
        return f"{line}; {self.speedups.plan.describe()}" if line else None

    def model_ids(self, *names: str) -> dict[str, dict]:
        """Return provenance {name: {id, revision}} for the named models."""
        return {name: self.refs[name].to_dict() for name in names}


def _ref(path_or_id: str, folder: Path, revision: str | None) -> ModelRef:
    return ModelRef(path_or_id, str(folder), revision or content_id(folder))


def model_refs(cfg: DiffusionConfig) -> dict[str, ModelRef]:
    """Resolve the folders of the models a DiffusionConfig asks for: {"sd", "controlnet-KIND", "hed"} -> ModelRef
    (folder, and the revision given or the folder's content id); a missing folder is a ModelLoadError."""
    refs = {"sd": _ref(cfg.model, resolve_model_path(cfg.model, "diffusion.model", cfg.revision), cfg.revision)}
    for kind in cfg.controlnet.conditions:
        where = f"diffusion.controlnet.models.{kind}"
        path = cfg.controlnet.models[kind]
        refs[f"controlnet-{kind}"] = _ref(path, resolve_model_path(path, where), None)
    if {"hed", "scribble"} & set(cfg.controlnet.conditions):
        refs["hed"] = _ref(cfg.controlnet.hed_annotator, _hed_folder(cfg.controlnet.hed_annotator), None)
    return refs


def _hed_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "ControlNetHED.pth").is_file():
        raise ModelLoadError(
            f"diffusion.controlnet.hed_annotator: {folder / 'ControlNetHED.pth'} not found "
            "(the HED annotator checkpoint, e.g. lllyasviel/Annotators' ControlNetHED.pth copied to disk)"
        )
    return folder


def check_models(cfg: DiffusionConfig) -> dict[str, ModelRef]:
    """Check every model a diffusion section names without loading any: folders, configs and weight headers
    (cheap: no tensor is read); return their refs. Any fault is a ModelLoadError naming the file and field."""
    refs = model_refs(cfg)
    check_pipeline_folder(Path(refs["sd"].folder))
    for kind in cfg.controlnet.conditions:
        _check_weighted_folder(Path(refs[f"controlnet-{kind}"].folder), f"diffusion.controlnet.models.{kind}")
    if "hed" in refs:
        check_weight_file(Path(refs["hed"].folder) / "ControlNetHED.pth", "diffusion.controlnet.hed_annotator")
    return refs


def load_hed(path: str):
    """Load controlnet-aux's HED detector from a folder holding ControlNetHED.pth (no hub)."""
    from controlnet_aux import HEDdetector

    return HEDdetector.from_pretrained(str(_hed_folder(path)), filename="ControlNetHED.pth", local_files_only=True)


def _scheduler(pipe, name: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cls = {"ddim": DDIMScheduler, "dpm-solver": DPMSolverMultistepScheduler}[name]
    return cls.from_config(pipe.scheduler.config)


def load_pipelines(cfg: DiffusionConfig) -> Pipelines:
    """Load the SD pipeline and the ControlNets a DiffusionConfig asks for, on its device and dtype."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from diffusers.utils.logging import disable_progress_bar

    disable_progress_bar()  # a bar per component load is noise in a run's log: stages print their own progress

    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype)
    refs = check_models(cfg)
    folder = Path(refs["sd"].folder)
    with _loading(folder, "diffusion.model"):
        sd = StableDiffusionPipeline.from_pretrained(
            folder, torch_dtype=dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    sd.scheduler = _scheduler(sd, cfg.scheduler)
    sd.set_progress_bar_config(disable=True)
    sd.to(device)
    speedups = apply_speedups(sd, resolve_speedups(cfg, device))
    pipes = Pipelines(sd=sd, device=device, dtype=dtype, refs=refs, speedups=speedups)
    for kind in cfg.controlnet.conditions:
        cn_folder = Path(refs[f"controlnet-{kind}"].folder)
        with _loading(cn_folder, f"diffusion.controlnet.models.{kind}"):
            net = ControlNetModel.from_pretrained(cn_folder, torch_dtype=dtype, local_files_only=True).to(device)
        pipe = StableDiffusionControlNetPipeline.from_pipe(sd, controlnet=net)
        pipe.set_progress_bar_config(disable=True)
        apply_speedups(pipe, speedups.plan, speedups)  # the shared UNet is done already: only the ControlNet
        pipes.controlnet[kind] = pipe
    if "hed" in refs:
        with _loading(Path(refs["hed"].folder), "diffusion.controlnet.hed_annotator"):
            pipes.hed = load_hed(refs["hed"].folder).to(device)
    return pipes


@contextmanager
def _loading(folder: Path, what: str) -> Iterator[None]:
    """Turn a library's failure to load a model folder (bad config, mismatched or truncated weights) into one
    ModelLoadError naming the config field and the folder."""
    try:
        yield
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{what}: cannot load {folder} ({type(err).__name__}: {first})") from None


_CACHE: dict[str, Pipelines] = {}


def cached_pipelines(cfg: DiffusionConfig) -> Pipelines:
    """Return load_pipelines(cfg), reusing the models already loaded in this process for the same config.

    Compiled forwards live on the cached models, so class tasks of one process compile once, on the first call.
    """
    key = cfg.model_dump_json(
        include={"model", "revision", "device", "dtype", "scheduler", *SPEED_FIELDS}
    ) + cfg.controlnet.model_dump_json(include={"conditions", "models", "hed_annotator"})
    if key not in _CACHE:
        _CACHE.clear()  # one model set at a time: GPU memory holds one SD, not one per config seen
        _CACHE[key] = load_pipelines(cfg)
    return _CACHE[key]


def size_multiple(pipe) -> int:
    """Return the side multiple a pipeline needs: VAE factor x the UNet's total downsampling."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
