"""The run manifest: one Parquet row per sample (key, shard, provenance, scores, size), its schema and I/O."""

from __future__ import annotations

import io
import math
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from maskforge.storage.fs import read_bytes

#: Metadata fields every sample must carry; they become manifest columns (and stay in the sample's json).
REQUIRED_META_FIELDS = (
    "dataset",
    "fold",
    "class_id",
    "class_name",
    "source",
    "mask_method",
    "seed",
    "shot_ids",
    "scores",
    "config_hash",
)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("fold", pa.int64(), nullable=False),
        pa.field("class_id", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("mask_method", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("shot_ids", pa.list_(pa.string()), nullable=False),
        pa.field("scores", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)

_STR_FIELDS = ("dataset", "class_name", "source", "mask_method", "config_hash")
_INT_FIELDS = ("fold", "class_id", "seed")


class ManifestError(ValueError):
    """Sample metadata that cannot become a manifest row, or a manifest file with the wrong schema."""


def validate_meta(key: str, meta: dict[str, Any]) -> None:
    """Raise ManifestError naming the key and field unless meta holds every manifest field with the right type."""
    missing = [name for name in REQUIRED_META_FIELDS if name not in meta]
    if missing:
        raise ManifestError(f"sample {key!r}: meta lacks required manifest fields {missing}")
    for name in _STR_FIELDS:
        if not isinstance(meta[name], str):
            raise ManifestError(f"sample {key!r}: meta[{name!r}] must be a str, got {meta[name]!r}")
    for name in _INT_FIELDS:
        value = meta[name]
        # bool is an int subclass; a True fold/seed is a bug upstream, not a value.
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
            raise ManifestError(f"sample {key!r}: meta[{name!r}] must be an int64, got {value!r}")
    shots = meta["shot_ids"]
    if not isinstance(shots, list) or not all(isinstance(s, str) for s in shots):
        raise ManifestError(f"sample {key!r}: meta['shot_ids'] must be a list of str, got {shots!r}")
    scores = meta["scores"]
    if not isinstance(scores, dict):
        raise ManifestError(f"sample {key!r}: meta['scores'] must be a dict str -> float, got {scores!r}")
    for name, value in scores.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ManifestError(f"sample {key!r}: meta['scores'] entry {name!r}: {value!r} is not str -> float")
        if not math.isfinite(value):
            raise ManifestError(
                f"sample {key!r}: meta['scores'][{name!r}] = {value!r} is not finite (JSON cannot hold it)"
            )


def manifest_row(key: str, shard: str, meta: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """Return the manifest row of one sample (meta already checked by validate_meta)."""
    row = {name: meta[name] for name in REQUIRED_META_FIELDS}
    row["shot_ids"] = list(meta["shot_ids"])
    # Map entries in sorted order: the same scores dict gives the same Parquet bytes whatever its insertion order.
    row["scores"] = sorted((name, float(value)) for name, value in meta["scores"].items())
    row.update(key=key, shard=shard, width=int(width), height=int(height))
    return row


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Return the manifest table (MANIFEST_SCHEMA column order) for rows as made by manifest_row."""
    columns = {field.name: [row[field.name] for row in rows] for field in MANIFEST_SCHEMA}
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def table_to_bytes(table: pa.Table) -> bytes:
    """Serialise a manifest table to Parquet with fixed settings, so the same rows always give the same bytes."""
    if not table.schema.equals(MANIFEST_SCHEMA):
        raise ManifestError(f"manifest table schema differs from MANIFEST_SCHEMA:\n{table.schema}")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy", use_dictionary=True, write_statistics=True, version="2.6")
    return buf.getvalue()


def table_from_bytes(data: bytes, where: str) -> pa.Table:
    """Parse manifest Parquet bytes, raising ManifestError naming `where` if the schema is not MANIFEST_SCHEMA."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{where} is not a readable Parquet file: {exc}") from exc
    if not table.schema.equals(MANIFEST_SCHEMA):
        raise ManifestError(f"{where} has schema\n{table.schema}\nexpected\n{MANIFEST_SCHEMA}")
    return table


def read_manifest(url: str) -> pa.Table:
    """Read and schema-check the manifest Parquet file at url (a path or fsspec URL)."""
    return table_from_bytes(read_bytes(url), url)
