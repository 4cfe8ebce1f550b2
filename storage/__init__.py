"""maskforge.storage (bottom layer): run folders, labels, fsspec, config files, embedding bank, results table."""

from maskforge.storage.codec import (
    ShardCodecError,
    ShardKeyError,
    ShardSample,
    decode_sample,
    encode_sample,
    validate_key,
)
from maskforge.storage.manifest import MANIFEST_SCHEMA, ManifestError, read_manifest, rows_to_table
from maskforge.storage.preview import render_preview
from maskforge.storage.reader import RunIncompleteError, RunReader
from maskforge.storage.shards import RunExistsError, RunWriter, write_config

__all__ = [
    "MANIFEST_SCHEMA",
    "ManifestError",
    "RunExistsError",
    "RunIncompleteError",
    "RunReader",
    "RunWriter",
    "ShardCodecError",
    "ShardKeyError",
    "ShardSample",
    "decode_sample",
    "encode_sample",
    "read_manifest",
    "render_preview",
    "rows_to_table",
    "validate_key",
    "write_config",
]
