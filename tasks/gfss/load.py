"""`maskforge gfss load`: what a GFSS checkpoint holds and whether it loads strictly, as lines to print."""

from __future__ import annotations

from pathlib import Path

from maskforge.models.gfss.checkpoint import GfssCheckpointError, authors_key_report, load_gfss
from maskforge.models.gfss.network import GfssModelError
from maskforge.tasks.learner import Shown


def load_report(checkpoint: Path) -> Shown:
    """Load a GFSS checkpoint strictly: ours (.safetensors: backbone and classes) or the GAPS authors' *_final.pt
    (every missing / unexpected / mis-shaped key); a problem when it does not load."""
    try:
        if checkpoint.suffix == ".safetensors":
            net, _ = load_gfss(str(checkpoint))
            return Shown(
                (
                    f"checkpoint: {checkpoint}",
                    f"format: maskforge safetensors; backbone {net.spec.backbone}, {net.spec.num_classes} classes",
                    "loaded strictly: all keys match",
                )
            )
        report = authors_key_report(str(checkpoint))
    except (GfssCheckpointError, GfssModelError) as err:
        return Shown(problem=str(err))
    lines = [
        f"checkpoint: {checkpoint}",
        f"format: GAPS authors' layout (backbone / head); {report['num_classes']} classes",
        f"backbone tensors: {report['backbone_tensors']}, head tensors: {report['head_tensors']}",
    ]
    for name in ("missing", "unexpected", "mismatched"):
        lines += [f"{name} keys: {len(report[name])}", *(f"  {key}" for key in report[name])]
    bad = sum(len(report[n]) for n in ("missing", "unexpected", "mismatched"))
    if bad:
        return Shown(tuple(lines), problem=f"{checkpoint} does not load strictly: {bad} key problem(s) listed above")
    return Shown((*lines, "loaded strictly: all keys match"))
