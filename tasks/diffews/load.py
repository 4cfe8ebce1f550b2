"""`maskforge diffews load`: whether a DiffewS UNet loads strictly, as lines to print."""

from __future__ import annotations

from pathlib import Path

from maskforge.models.diffews.checkpoint import DiffewsCheckpointError, key_report, load_diffews
from maskforge.models.diffews.network import DiffewsModelError
from maskforge.storage.marked_folder import COMPLETE
from maskforge.tasks.learner import Shown


def load_report(folder: Path) -> Shown:
    """Check a DiffewS UNet strictly: missing / unexpected / mis-shaped keys. A maskforge checkpoint folder's files
    are first checked against the sha256 its COMPLETE.json recorded, as evaluation does; a UNet folder, or the folder
    holding it as unet/ (the authors' scripts), is read as it is."""
    ours = (folder / COMPLETE).is_file()
    unet_dir = folder / "unet" if ours else folder  # key_report also takes the folder holding unet/ (authors')
    try:
        if ours:
            load_diffews(folder)  # verifies every file's sha256 against the marker
        report, unet, _ = key_report(unet_dir, str(folder))
    except (DiffewsCheckpointError, DiffewsModelError) as err:
        return Shown(problem=str(err))
    lines = [
        f"weights: {report.file}",
        f"tensors: {report.tensors}; conv_in_ref: {tuple(unet.conv_in_ref.weight.shape)}",
    ]
    for name in ("missing", "unexpected", "mis_shaped"):
        keys = getattr(report, name)
        lines += [f"{name.replace('_', '-')} keys: {len(keys)}", *(f"  {key}" for key in keys)]
    if not report.ok:
        return Shown(tuple(lines), problem=f"{folder} does not load strictly: {report.summary()}")
    return Shown((*lines, "loaded strictly: all keys match"))
