"""The benchmark table: one Parquet file per appended evaluation run in a folder, read back as one table."""

from __future__ import annotations

import io
import subprocess
import uuid
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from maskforge.storage.fs import atomic_write_bytes, exists, join, read_bytes, resolve

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("created_at", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("backbone", pa.string(), nullable=False),
        pa.field("checkpoint", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("fold", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("shots", pa.int64(), nullable=False),
        pa.field("synthetic_source", pa.string(), nullable=False),
        pa.field("synthetic_per_class", pa.int64(), nullable=False),
        pa.field("setting", pa.string(), nullable=False),
        pa.field("episodes", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("miou", pa.float64(), nullable=False),
        pa.field("fb_iou", pa.float64(), nullable=False),
        pa.field("class_iou", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ]
)


class ResultsError(ValueError):
    """A benchmark row or table file that does not fit the schema (names the field or file)."""


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """Validate rows against RESULTS_SCHEMA and return them as a table."""
    names = set(RESULTS_SCHEMA.names)
    for i, row in enumerate(rows):
        missing, extra = names - set(row), set(row) - names
        if missing or extra:
            raise ResultsError(
                f"benchmark row {i}: missing fields {sorted(missing)}, unexpected fields {sorted(extra)}"
            )
    data = [{**row, "class_iou": list(row["class_iou"].items())} for row in rows]
    try:
        return pa.Table.from_pylist(data, schema=RESULTS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ResultsError(f"benchmark rows do not fit the schema: {err}") from None


def append_results(table_dir: str, rows: list[dict[str, Any]]) -> str:
    """Append rows by writing one new Parquet file (temp name, then rename) into table_dir; returns its URL.

    Existing files are never rewritten, so concurrent writers and readers never see a partial table.
    """
    if not rows:
        raise ResultsError("append_results: no rows to append")
    table = _table(rows)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    url = join(table_dir, f"results-{stamp}-{uuid.uuid4().hex[:8]}.parquet")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(url, buf.getvalue())
    return url


def read_results(table_dir: str) -> pa.Table:
    """Return every row of the benchmark table in table_dir, files in name order (their UTC time to the microsecond)."""
    if not exists(table_dir):
        return RESULTS_SCHEMA.empty_table()
    fs, path = resolve(table_dir)
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    files = sorted(n for n in names if n.startswith("results-") and n.endswith(".parquet"))
    tables = []
    for file in files:
        url = join(table_dir, file)
        try:
            table = pq.read_table(io.BytesIO(read_bytes(url)))
        except pa.ArrowInvalid as err:
            raise ResultsError(f"{url}: not a readable Parquet file: {err}") from None
        if not table.schema.equals(RESULTS_SCHEMA):
            raise ResultsError(f"{url}: schema differs from the benchmark schema; expected {RESULTS_SCHEMA.names}")
        tables.append(table)
    return pa.concat_tables(tables) if tables else RESULTS_SCHEMA.empty_table()


def code_version() -> str:
    """Return maskforge's version, plus '+g<commit>' when the code lives in a git checkout (with '-dirty' if edited)."""
    try:
        base = version("maskforge")
    except PackageNotFoundError:
        base = "0+unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{commit}" if commit else base
