"""Reading torch weight files (.pt, .pth, .bin) safely: torch.load(weights_only=True), never pickled code, and one
plain line when torch refuses a file.

torch's refusal repeats its advice to retry with weights_only=False, which "will likely succeed" and would run the
file's code; maskforge never does, so its messages name the file and the blocked global instead."""

from __future__ import annotations

import re
from pathlib import Path

import torch

#: The global torch's weights-only unpickler refused, as its message names it (`GLOBAL posix.system`).
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
#: The cause in older torch messages.
_UNPICKLER_CAUSE = re.compile(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", re.S)


class WeightsFileError(ValueError):
    """A weight file torch.load(weights_only=True) cannot read: pickled code, or not a torch file at all."""


def refusal(path: str | Path, err: BaseException) -> str:
    """Return one line on why torch.load(weights_only=True) refused `path`: the blocked global of a file that holds
    pickled code, else the unpickler's cause; never torch's advice to load unsafely."""
    text = str(err)
    if blocked := _BLOCKED_GLOBAL.search(text):
        return (
            f"{path} holds pickled code (it needs the global {blocked.group(1)}, which torch.load(weights_only=True) "
            "blocks); maskforge never loads pickled code: save the weights as a state dict of tensors "
            "(torch.save(model.state_dict(), file)) or as .safetensors"
        )
    cause = _UNPICKLER_CAUSE.search(text)
    lines = [line for line in text.splitlines() if line.strip() and "weights_only" not in line]
    reason = " ".join(cause.group(1).split()) if cause else (lines[0].strip() if lines else "")
    return (
        f"{path} is not a readable torch state dict ({reason or type(err).__name__}); maskforge reads .pt/.pth/.bin "
        "files with torch.load(weights_only=True), which accepts tensors and plain containers only"
    )


def load_weights_only(path: str | Path):
    """Return what torch.load(path, weights_only=True) reads (on the CPU); WeightsFileError (refusal) otherwise."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file: say which and why
        raise WeightsFileError(refusal(path, err)) from None
