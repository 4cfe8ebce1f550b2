"""maskforge.storage (bottom layer): run folders, labels, fsspec, config files, embedding bank, results table.

The names below are re-exported on first use (PEP 562): importing one storage module (yaml_config, for a config
check) must not import the shard codec, pyarrow's manifest and the reader, which keeps `maskforge --help` and config
errors fast (bench/cli_start.py).
"""

from __future__ import annotations

import importlib

#: Re-exported name -> the storage module that defines it.
_EXPORTS = {
    "ShardCodecError": "codec",
    "ShardKeyError": "codec",
    "ShardSample": "codec",
    "decode_sample": "codec",
    "encode_sample": "codec",
    "validate_key": "codec",
    "MANIFEST_SCHEMA": "manifest",
    "ManifestError": "manifest",
    "read_manifest": "manifest",
    "rows_to_table": "manifest",
    "render_preview": "preview",
    "RunIncompleteError": "reader",
    "RunReader": "reader",
    "RunExistsError": "shards",
    "RunWriter": "shards",
    "write_config": "shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines a re-exported name on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'maskforge.storage' has no attribute {name!r}")
    return getattr(importlib.import_module(f"maskforge.storage.{_EXPORTS[name]}"), name)
