"""One heavy GPU task at a time: a Prefect global concurrency slot, named by MASKFORGE_GPU_LIMIT when set."""

from __future__ import annotations

import os
from contextlib import contextmanager

#: Environment variable naming the global concurrency limit GPU tasks occupy (`maskforge serve` sets it to "gpu").
GPU_LIMIT_ENV = "MASKFORGE_GPU_LIMIT"


@contextmanager
def gpu_slot():
    """Hold one slot of the limit named by MASKFORGE_GPU_LIMIT (strict: a missing limit is an error); no-op unset."""
    name = os.environ.get(GPU_LIMIT_ENV)
    if not name:
        yield
        return
    from prefect.concurrency.sync import concurrency

    # strict=True: Prefect silently skips a limit that does not exist otherwise, and the GPU would be shared.
    with concurrency(name, occupy=1, strict=True):
        yield
