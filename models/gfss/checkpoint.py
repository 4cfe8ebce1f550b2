"""GFSS checkpoints: our safetensors files (spec and config in the metadata) and the authors' {backbone, head} .pt."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import torch

from maskforge.models.gfss.network import GfssModelError, GfssNet, GfssSpec, build_gfss
from maskforge.models.weights_file import WeightsFileError, load_weights_only
from maskforge.storage.fs import atomic_write_bytes, file_problem

#: Value of the "format" metadata entry of our safetensors files.
GFSS_FORMAT = "maskforge-gfss/1"
#: Classes assumed when the authors' head tensor is absent (GAPS's 15+1 PASCAL split), so the report can go on.
_DEFAULT_AUTHORS_CLASSES = 16
_HEAD_KEY = "pixel_classifier.class_mat.weight"
_COUNTER = "num_batches_tracked"


class GfssCheckpointError(ValueError):
    """A GFSS checkpoint that cannot be read or does not match the network it describes (names the file and keys)."""


def save_gfss(path: str, net: GfssNet, config: dict, extra: dict | None = None) -> None:
    """Write every backbone and head tensor (keys `backbone.*`, `head.*`) as safetensors, spec/config in metadata.

    The write is atomic: readers see the previous file or the complete new one.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    metadata = {
        "format": GFSS_FORMAT,
        "spec": json.dumps(net.spec.to_dict(), sort_keys=True),
        "config": json.dumps(config, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_gfss(path: str, spec: GfssSpec | None = None) -> tuple[GfssNet, dict]:
    """Load a GFSS checkpoint strictly: (net in eval mode, {"spec": dict, "config", "extra"}).

    `.safetensors` is our format; `.pt`/`.pth` is the authors' layout (resnet101 with its head's class count unless
    `spec` says otherwise), returned with config None and extra {"source": "authors"}.
    """
    file = Path(path)
    if problem := file_problem(file):
        raise GfssCheckpointError(f"checkpoint {path!r} {problem}; expected a .safetensors, .pt or .pth file")
    if file.suffix in (".pt", ".pth"):
        net = load_authors(path, spec=spec)
        return net, {"spec": net.spec.to_dict(), "config": None, "extra": {"source": "authors"}}
    if file.suffix != ".safetensors":
        raise GfssCheckpointError(
            f"checkpoint {path!r}: unknown suffix {file.suffix!r}; expected .safetensors, .pt or .pth"
        )
    state, meta = _read_ours(path)
    try:
        own_spec = GfssSpec.from_dict(meta["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise GfssCheckpointError(f"checkpoint {path!r}: bad spec in its metadata: {err}") from None
    net = build_gfss(own_spec)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing, unexpected, mismatched = _compare(expected, state)
    if missing or unexpected or mismatched:
        raise GfssCheckpointError(
            f"checkpoint {path!r} does not match its GfssNet spec: {_describe(missing, unexpected, mismatched)}"
        )
    net.load_state_dict(state, strict=True)
    return net.eval(), meta


def authors_key_report(path: str, backbone: str = "resnet101", spec: GfssSpec | None = None) -> dict:
    """Compare the authors' `{"backbone", "head"}` file to our network's keys and shapes, without building weights.

    The network is `spec` (default: GfssSpec(backbone)) with the file's class count; keys are reported as
    `backbone.<key>` / `head.<key>`. Returns num_classes, backbone_tensors, head_tensors, missing, unexpected and
    mismatched ("key: file (a, b) vs model (c, d)").
    """
    backbone_state, head_state = _read_authors(path)
    return _authors_report(path, backbone_state, head_state, backbone, spec)[0]


def load_authors(path: str, backbone: str = "resnet101", spec: GfssSpec | None = None) -> GfssNet:
    """Load the authors' checkpoint strictly into a new GfssNet (eval mode); any key difference is an error."""
    backbone_state, head_state = _read_authors(path)
    report, net_spec = _authors_report(path, backbone_state, head_state, backbone, spec)
    if report["missing"] or report["unexpected"] or report["mismatched"]:
        raise GfssCheckpointError(
            f"checkpoint {path!r} does not match GfssNet({net_spec.backbone}, {net_spec.num_classes} classes): "
            f"{_describe(report['missing'], report['unexpected'], report['mismatched'])}"
        )
    net = build_gfss(net_spec)
    state = {f"backbone.{k}": v for k, v in backbone_state.items()}
    state.update({f"head.{k}": v for k, v in head_state.items()})
    # BatchRenorm keeps no step counter; ours are only read in training with momentum=None, so zero is harmless.
    for key, value in net.state_dict().items():
        if key.endswith(_COUNTER):
            state[key] = torch.zeros_like(value)
    net.load_state_dict(state, strict=True)
    return net.eval()


def write_authors_layout(path: str, net: GfssNet) -> None:
    """Write `net` as the authors do: torch.save({"backbone": ..., "head": ...}) without BN step counters."""
    layout = {
        "backbone": {
            k: v.detach().cpu().clone() for k, v in net.backbone.state_dict().items() if not k.endswith(_COUNTER)
        },
        "head": {k: v.detach().cpu().clone() for k, v in net.head.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(layout, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _read_ours(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read our safetensors file: (tensors, {"spec", "config", "extra"} decoded from its metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            raw = handle.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise GfssCheckpointError(f"checkpoint {path!r} is not a readable safetensors file: {err}") from None
    if raw.get("format") != GFSS_FORMAT:
        raise GfssCheckpointError(
            f"checkpoint {path!r}: metadata format {raw.get('format')!r}, expected {GFSS_FORMAT!r} (a GFSS checkpoint)"
        )
    try:
        meta = {name: json.loads(raw[name]) for name in ("spec", "config", "extra")}
    except (KeyError, json.JSONDecodeError) as err:
        raise GfssCheckpointError(f"checkpoint {path!r}: metadata entry {err} missing or not JSON") from None
    return state, meta


def _read_authors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read the authors' file: its "backbone" and "head" state dicts (torch.load with weights_only, never code)."""
    if problem := file_problem(path):
        raise GfssCheckpointError(f"checkpoint {path!r} {problem}; expected the authors' *_final.pt file")
    try:
        raw = load_weights_only(path)
    except WeightsFileError as err:
        raise GfssCheckpointError(f"checkpoint {err}") from None
    if not isinstance(raw, dict) or set(raw) != {"backbone", "head"}:
        found = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise GfssCheckpointError(
            f"checkpoint {path!r} holds {found}, expected a dict with exactly the keys 'backbone' and 'head'"
        )
    for part in ("backbone", "head"):
        if not isinstance(raw[part], dict) or not all(isinstance(v, torch.Tensor) for v in raw[part].values()):
            raise GfssCheckpointError(f"checkpoint {path!r}: entry {part!r} is not a state dict of tensors")
    return dict(raw["backbone"]), dict(raw["head"])


def _authors_report(
    path: str,
    backbone_state: dict[str, torch.Tensor],
    head_state: dict[str, torch.Tensor],
    backbone: str,
    spec: GfssSpec | None,
) -> tuple[dict, GfssSpec]:
    """Compare the authors' two state dicts to a meta-device GfssNet: (report dict, the spec compared against)."""
    head_weight = head_state.get(_HEAD_KEY)
    num_classes = int(head_weight.shape[0]) if head_weight is not None and head_weight.dim() > 0 else None
    try:
        base = spec if spec is not None else GfssSpec(backbone, _DEFAULT_AUTHORS_CLASSES)
        net_spec = dataclasses.replace(base, num_classes=num_classes or _DEFAULT_AUTHORS_CLASSES)
    except GfssModelError as err:
        raise GfssCheckpointError(f"checkpoint {path!r}: {err}") from None
    with torch.device("meta"):
        model = build_gfss(net_spec)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(_COUNTER)}
    state = {f"backbone.{k}": v for k, v in backbone_state.items()}
    state.update({f"head.{k}": v for k, v in head_state.items()})
    missing, unexpected, mismatched = _compare(expected, state)
    report = {
        "num_classes": net_spec.num_classes,
        "backbone_tensors": len(backbone_state),
        "head_tensors": len(head_state),
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
    }
    return report, net_spec


def _compare(
    expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Return (missing, unexpected, mismatched) keys of `state` against expected shapes, sorted."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {shape}"
        for k, shape in sorted(expected.items())
        if k in state and tuple(state[k].shape) != shape
    ]
    return missing, unexpected, mismatched


def _describe(missing: list[str], unexpected: list[str], mismatched: list[str], limit: int = 5) -> str:
    """Return one line listing up to `limit` keys of each kind of difference, with their counts."""
    parts = [
        f"{len(keys)} {name} {keys[:limit]}"
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
        if keys
    ]
    return "; ".join(parts)
