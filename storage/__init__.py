"""maskforge.storage (bottom layer): run folders, labels, fsspec, config files, embedding bank, results table.

The names below are re-exported on first use (PEP 562): importing one storage module (yaml_config, for a config
check) must not import the shard codec, pyarrow's manifest and the reader, which keeps `maskforge --help` and config
errors fast (bench/cli_start.py).
"""

from __future__ import annotations

from maskforge.storage.lazy_exports import lazy_getattr

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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
