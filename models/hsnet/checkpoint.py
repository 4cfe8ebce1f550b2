"""HSNet checkpoints: strict loading of the authors' `module.`-prefixed state dicts and our safetensors files."""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from maskforge.models.hsnet.model import HSNet, HSNetCheckpointModule, HSNetSpec, build_hsnet
from maskforge.models.weights_file import WeightsFileError, load_weights_only
from maskforge.storage.fs import file_problem

#: safetensors metadata key holding our JSON header: model spec and the resolved training config.
METADATA_KEY = "maskforge.hsnet"
_LAYER3_RE = re.compile(r"^module\.backbone\.layer3\.(\d+)\.conv1\.weight$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not match the HSNet it is loaded into (names file and keys)."""


@dataclass(frozen=True)
class LoadReport:
    """How a state dict compares to a model's: missing keys, unexpected keys and shape mismatches."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every key matches in name and shape (a strict load succeeds)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        """Return a short human-readable summary listing up to `limit` keys of each kind."""
        parts = []
        for name, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if keys:
                more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
                parts.append(f"{len(keys)} {name}: {', '.join(keys[:limit])}{more}")
        return "; ".join(parts) if parts else "all keys match"


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a checkpoint file: (state dict, our metadata or None). `.safetensors` or a torch pickle of a state dict."""
    file = Path(path)
    if problem := file_problem(file):
        raise CheckpointError(f"checkpoint {str(file)!r} {problem}; expected a .safetensors or .pt/.pth file")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                raw = (handle.metadata() or {}).get(METADATA_KEY)
            state = load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"checkpoint {str(file)!r} is not a readable safetensors file: {err}") from None
        return state, json.loads(raw) if raw else None
    try:
        state = load_weights_only(file)
    except WeightsFileError as err:
        raise CheckpointError(f"checkpoint {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint {str(file)!r} holds a {type(state).__name__}, expected a state dict of tensors"
        )
    return state, None


def infer_spec(state: dict[str, torch.Tensor], meta: dict | None, source: str) -> HSNetSpec:
    """Return the HSNetSpec of a checkpoint: from our metadata, else from the authors' backbone key layout."""
    if meta is not None:
        return HSNetSpec.from_dict(meta["spec"])
    if "module.backbone.features.0.weight" in state:
        return HSNetSpec("vgg16")
    blocks = {int(m.group(1)) for k in state if (m := _LAYER3_RE.match(k))}
    if len(blocks) == 6:
        return HSNetSpec("resnet50")
    if len(blocks) == 23:
        return HSNetSpec("resnet101")
    sample = ", ".join(list(state)[:3])
    raise CheckpointError(
        f"checkpoint {source!r}: cannot tell its backbone; expected HSNet keys 'module.backbone.features.*' (vgg16) or "
        f"'module.backbone.layer3.N.*' with 6 (resnet50) or 23 (resnet101) blocks, found {len(blocks)} layer3 "
        f"blocks and keys like {sample}"
    )


def compare_state(net: HSNet, state: dict[str, torch.Tensor]) -> LoadReport:
    """Compare a `module.`-prefixed state dict to an HSNet's expected keys and shapes."""
    expected = HSNetCheckpointModule(net).state_dict()
    missing = tuple(sorted(set(expected) - set(state)))
    unexpected = tuple(sorted(set(state) - set(expected)))
    mismatched = tuple(
        f"{k} {list(state[k].shape)} != {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    return LoadReport(missing, unexpected, mismatched)


def load_state_strict(net: HSNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a `module.`-prefixed state dict into an HSNet strictly; any key or shape difference is a CheckpointError."""
    report = compare_state(net, state)
    if not report.ok:
        raise CheckpointError(f"checkpoint {source!r} does not match HSNet({net.spec.backbone}): {report.describe()}")
    HSNetCheckpointModule(net).load_state_dict(state, strict=True)


def inspect_checkpoint(path: str | Path) -> tuple[HSNet, LoadReport, dict | None]:
    """Build the HSNet a checkpoint describes and compare keys; load it when they all match. Returns (net, report,
    meta)."""
    state, meta = read_state(path)
    spec = infer_spec(state, meta, str(path))
    net = build_hsnet(spec, None)
    report = compare_state(net, state)
    if report.ok:
        HSNetCheckpointModule(net).load_state_dict(state, strict=True)
    return net, report, meta


def load_checkpoint(path: str | Path) -> tuple[HSNet, dict | None]:
    """Load a checkpoint strictly into the HSNet it describes: (net, metadata); a mismatch is a CheckpointError."""
    net, report, meta = inspect_checkpoint(path)
    if not report.ok:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match HSNet({net.spec.backbone}): {report.describe()}"
        )
    return net, meta


def save_checkpoint(path: str | Path, net: HSNet, config: dict | None, extra: dict | None = None) -> None:
    """Write the full `module.`-prefixed state dict as safetensors, with spec and config in the metadata, atomically."""
    from safetensors.torch import save_file

    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in HSNetCheckpointModule(net).state_dict().items()}
    meta = {"spec": net.spec.to_dict(), "config": config, **(extra or {})}
    tmp = file.parent / f".{file.name}.{uuid.uuid4().hex}.tmp"
    try:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
        os.replace(tmp, file)
    finally:
        if tmp.exists():
            tmp.unlink()
