"""DiffewS models from local folders: build from an SD pipeline folder, load/save a DiffewS UNet folder strictly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from maskforge.models.diffews.network import IN_CHANNELS_REF, DiffewsModelError, add_conv_in_ref
from maskforge.models.loading import check_pipeline_folder, resolve_model_path
from maskforge.models.weights_file import WeightsFileError, load_weights_only
from maskforge.storage.marked_folder import MarkedFolderError, read_marked_folder, write_marked_folder

#: Weight files of a DiffewS UNet folder, in the order they are looked for.
UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: File of a DiffewS checkpoint folder holding the empty-prompt embedding training used.
TEXT_EMBEDDING = "text_embedding.safetensors"


class DiffewsCheckpointError(FileNotFoundError):
    """A DiffewS UNet folder or checkpoint that is missing, incomplete or does not match: names the file."""


def _read_unet_config(folder: Path, what: str) -> dict:
    """Return a UNet folder's config.json, checked to describe a 4-channel-input UNet2DConditionModel."""
    file = folder / "config.json"
    if not file.is_file():
        raise DiffewsCheckpointError(f"{what}: {file} not found (a diffusers UNet folder has config.json)")
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DiffewsCheckpointError(f"{what}: {file} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise DiffewsCheckpointError(f"{what}: {file} holds a JSON {type(config).__name__}; expected an object")
    if config.get("_class_name") not in (None, "UNet2DConditionModel", "MyUNet2DConditionModel"):
        raise DiffewsModelError(f"{what}: {file} describes a {config['_class_name']}, expected a UNet2DConditionModel")
    if config.get("in_channels") != 4:
        raise DiffewsModelError(
            f"{what}: {file} has in_channels {config.get('in_channels')}; DiffewS needs SD's 4-channel conv_in "
            "(the query latent) and adds its own 8-channel conv_in_ref for the support"
        )
    return config


def _build_unet(config: dict, file: Path, what: str):
    """Return a UNet2DConditionModel from config.json's dict (DiffewS's extra keys dropped), with conv_in_ref
    added; a config diffusers cannot build (inconsistent block lists, a wrong type) is an error naming the file."""
    from diffusers import UNet2DConditionModel

    try:
        ref_channels = int(config.get("in_channels_ref", IN_CHANNELS_REF))
        clean = {k: v for k, v in config.items() if k != "in_channels_ref"}
        unet = UNet2DConditionModel.from_config(clean)
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # diffusers' own checks and bad value types
        raise DiffewsCheckpointError(f"{what}: {file} does not describe a UNet diffusers can build ({err})") from None
    add_conv_in_ref(unet, ref_channels)
    return unet


def _weights_file(folder: Path, what: str) -> Path:
    """Return the UNet folder's weight file (safetensors first), or an error naming the folder."""
    for name in UNET_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise DiffewsCheckpointError(f"{what}: {folder} has no weights; expected one of {list(UNET_WEIGHTS)}")


def _read_state(file: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch .bin (weights_only: no code runs)."""
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        state = load_weights_only(file)
    except WeightsFileError as err:
        raise DiffewsCheckpointError(f"{what}: {err}") from None
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise DiffewsCheckpointError(f"{what}: cannot read {file} ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise DiffewsCheckpointError(f"{what}: {file} holds a {type(state).__name__}, expected a state dict")
    return state


@dataclass
class KeyReport:
    """How a weight file's keys match the DiffewS UNet its config describes."""

    file: str
    missing: list[str]
    unexpected: list[str]
    mis_shaped: list[str]
    tensors: int

    @property
    def ok(self) -> bool:
        """True when every key is present with its shape and none is extra."""
        return not (self.missing or self.unexpected or self.mis_shaped)

    def summary(self) -> str:
        """One line: counts and the first few keys of each kind."""
        parts = [f"{self.file}: {self.tensors} tensors"]
        kinds = (("missing", self.missing), ("unexpected", self.unexpected), ("mis-shaped", self.mis_shaped))
        for label, keys in kinds:
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        return "; ".join(parts)


def unet_folder(path: str | Path) -> Path:
    """Return the UNet folder a path names: the path itself when it holds config.json, else its `unet/` when that
    does. The authors' eval scripts take the folder *holding* unet/ (aim-uofa/DiffewS d12c396,
    evaluation_util/main_oss.py:327-330: from_pretrained(unet_ckpt_path, subfolder="unet")); anything else is
    returned unchanged for the caller's own error."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        return folder / "unet"
    return folder


def key_report(folder: str | Path, what: str = "diffews.unet") -> tuple[KeyReport, object, dict]:
    """Compare a DiffewS UNet folder's weights with the UNet its config.json describes (plus conv_in_ref).

    Returns (report, unet built from the config, state dict read). Raises on an unreadable folder or a config
    whose conv_in is not 4-channel.
    """
    folder = unet_folder(folder)
    if not folder.is_dir():
        raise DiffewsCheckpointError(
            f"{what}: {folder} is not a folder (expected a DiffewS UNet folder or the folder holding its unet/)"
        )
    unet = _build_unet(_read_unet_config(folder, what), folder / "config.json", what)
    file = _weights_file(folder, what)
    state = _read_state(file, what)
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    )
    return KeyReport(str(file), missing, unexpected, mis_shaped, len(state)), unet, state


def load_diffews_unet(folder: str | Path, what: str = "diffews.unet"):
    """Load a DiffewS UNet folder (the authors' release or one maskforge wrote) strictly: any missing (conv_in_ref
    included), unexpected or mis-shaped key is a DiffewsCheckpointError naming the file."""
    report, unet, state = key_report(folder, what)
    if not report.ok:
        raise DiffewsCheckpointError(f"{what}: weights do not match the DiffewS UNet: {report.summary()}")
    unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return unet


def build_from_sd(sd_path: str, what: str = "model.sd"):
    """Return SD's UNet from a local pipeline folder (or cached hub id; never downloaded) with conv_in_ref added."""
    from diffusers import UNet2DConditionModel

    folder = resolve_model_path(sd_path, what)
    check_pipeline_folder(folder, what)
    _read_unet_config(folder / "unet", what)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
    add_conv_in_ref(unet)
    return unet


def load_frozen_parts(sd_path: str, what: str = "model.sd"):
    """Return (VAE, tokenizer, text encoder) of a local SD pipeline folder, frozen and in eval mode."""
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel

    folder = resolve_model_path(sd_path, what)
    check_pipeline_folder(folder, what)
    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).requires_grad_(False).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    return vae, tokenizer, encoder.requires_grad_(False).eval()


@torch.no_grad()
def empty_prompt_embedding(tokenizer, text_encoder) -> torch.Tensor:
    """Return the text encoder's output for the empty prompt padded to the tokenizer's length: (1, L, C).

    Computed once and stored with the checkpoint, so training and evaluation condition on the same tensor (the
    authors' release trains on 77 tokens and evaluates on 2).
    """
    ids = tokenizer(
        "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


def save_diffews(out: str | Path, unet, text_embedding: torch.Tensor, metadata: dict, dtype=torch.float32) -> Path:
    """Write a DiffewS checkpoint folder atomically (storage/marked_folder.py): unet/ (config.json with
    in_channels_ref + safetensors in the authors' key layout), text_embedding.safetensors, and COMPLETE.json last
    (file sha256s, metadata). `dtype` (e.g. float16 for shipped toy weights) is the storage type; loading always
    returns float32."""
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
    text = {"text_embedding": text_embedding.detach().cpu().float().contiguous()}
    writers = {
        "unet/config.json": lambda path: unet.save_config(Path(path).parent),
        f"unet/{UNET_WEIGHTS[0]}": lambda path: save_file(state, path, metadata={"format": "pt"}),
        TEXT_EMBEDDING: lambda path: save_file(text, path),
    }
    try:
        write_marked_folder(str(out), writers, metadata)
    except MarkedFolderError as err:
        raise DiffewsCheckpointError(f"diffews checkpoint: {err}") from None
    return Path(out)


def load_diffews(path: str | Path, verify: bool = True):
    """Load a maskforge DiffewS checkpoint folder: returns (unet, text embedding, metadata from COMPLETE.json).

    The marker's sha256 of every file is checked on read (`verify`); a folder without the marker is incomplete.
    """
    folder = Path(path).expanduser()
    try:
        meta = read_marked_folder(folder, ("unet/config.json", f"unet/{UNET_WEIGHTS[0]}", TEXT_EMBEDDING), verify)
    except MarkedFolderError as err:
        raise DiffewsCheckpointError(
            f"diffews checkpoint: {err} (train first, or give an authors' UNet folder as model.unet)"
        ) from None
    unet = load_diffews_unet(folder / "unet", f"diffews checkpoint {folder}")
    try:
        with safe_open(str(folder / TEXT_EMBEDDING), framework="pt") as fh:
            text = fh.get_tensor("text_embedding")
    except (SafetensorError, OSError) as err:
        raise DiffewsCheckpointError(f"diffews checkpoint: cannot read {folder / TEXT_EMBEDDING} ({err})") from None
    return unet, text, meta
