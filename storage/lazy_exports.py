"""Package-level names loaded on first use (PEP 562), for the packages whose init a config check imports: importing
`maskforge.storage.yaml_config` or `maskforge.eval.datasets.config` runs their package's `__init__`, which must not
import the shard codec or every dataset adapter (bench/cli_start.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """Return a module `__getattr__` for `package` that imports `package.<exports[name]>` on first access of `name`."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
