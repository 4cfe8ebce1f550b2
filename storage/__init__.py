"""maskforge storage: WebDataset run folders (shards, Parquet manifest, summary, completion marker) and previews."""

from storage.codec import ShardCodecError, ShardKeyError, ShardSample, decode_sample, encode_sample, validate_key
from storage.manifest import MANIFEST_SCHEMA, ManifestError, read_manifest, rows_to_table
from storage.preview import render_preview
from storage.reader import RunIncompleteError, RunReader
from storage.shards import RunExistsError, RunWriter, write_config

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
