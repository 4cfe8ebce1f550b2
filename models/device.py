"""Where models run: one resolution of a config's device (and dtype) field, and a scoped torch CPU thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str, field: str = "run.device") -> torch.device:
    """Return the torch device of a config field (named in errors): cpu, cuda (an error without CUDA) or auto."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}: 'cuda' requested but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, field: str = "diffusion.dtype") -> torch.dtype:
    """Return the torch dtype of a config field: auto = float16 on GPU, float32 on CPU; half on CPU is an error."""
    if dtype == "auto":
        dtype = "float16" if device.type == "cuda" else "float32"
    if device.type == "cpu" and dtype != "float32":
        raise ValueError(f"{field}: {dtype} on CPU is not supported (use float32 or a GPU)")
    return getattr(torch, dtype)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch CPU threads (0: leave torch's setting), restoring the previous count."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
