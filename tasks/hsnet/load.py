"""`maskforge hsnet load`: what a checkpoint holds and whether it loads strictly, as lines to print."""

from __future__ import annotations

from pathlib import Path

from maskforge.models.hsnet.checkpoint import CheckpointError, inspect_checkpoint
from maskforge.models.hsnet.model import learnable_parameters
from maskforge.tasks.learner import Shown


def load_report(checkpoint: Path) -> Shown:
    """Load an HSNet checkpoint (the authors' .pt or a maskforge .safetensors) strictly: its format, backbone,
    learnable parameter count and every missing / unexpected / mis-shaped key; a problem when it does not load."""
    try:
        net, report, meta = inspect_checkpoint(checkpoint)
    except CheckpointError as err:
        return Shown(problem=str(err))
    lines = [
        f"checkpoint: {checkpoint}",
        f"format: {'maskforge safetensors' if meta is not None else 'HSNet state dict (module.-prefixed)'}",
        f"backbone: {net.spec.backbone}",
        f"learnable parameters: {learnable_parameters(net)}",
    ]
    for name, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        lines += [f"{name} keys: {len(keys)}", *(f"  {key}" for key in keys)]
    lines += [f"shape mismatches: {len(report.mismatched)}", *(f"  {key}" for key in report.mismatched)]
    if not report.ok:
        return Shown(tuple(lines), problem=f"{checkpoint} does not load strictly: {report.describe(limit=3)}")
    return Shown((*lines, "loaded strictly: all keys match"))
