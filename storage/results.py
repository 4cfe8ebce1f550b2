"""The benchmark table: one Parquet file per appended evaluation run in a folder, read back as one table.

Rows of every learner family (HSNet episodes, GFSS runs) share one schema; scores are named values in `metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import uuid
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maskforge.storage.fs import atomic_write_bytes, exists, join, read_bytes, resolve
from maskforge.storage.yaml_config import digest

_FLOAT_MAP = pa.map_(pa.string(), pa.float64())

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
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("setting", pa.string(), nullable=False),
        pa.field("synthetic_source", pa.string(), nullable=False),
        pa.field("synthetic_per_class", pa.int64(), nullable=False),
        pa.field("evaluated", pa.int64(), nullable=False),
        pa.field("runs", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("metrics", _FLOAT_MAP, nullable=False),
        pa.field("class_iou", _FLOAT_MAP, nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ]
)

# The schema before metrics became named values (HSNet only); files written with it are converted on read.
OLD_RESULTS_SCHEMA = pa.schema(
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
        pa.field("class_iou", _FLOAT_MAP, nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("code_version", pa.string(), nullable=False),
    ]
)

HSNET_PROTOCOL = "fss-episodes"
#: The protocol column of GFSS rows (PIFS evaluation of every run and step) and of MaskDiff rows (COCO AP).
GFSS_PROTOCOL = "gfss-pifs"
FSIS_PROTOCOL = "fsis-coco"


class ResultsError(ValueError):
    """A benchmark row or table file that does not fit the schema (names the field or file)."""


def _check_metrics(i: int, metrics: Any) -> None:
    """Raise ResultsError unless row i's metrics are a non-empty dict of metric name to finite float."""
    if not isinstance(metrics, dict) or not metrics:
        raise ResultsError(
            f"benchmark row {i}: metrics is {metrics!r}; expected a non-empty dict of metric name to finite float"
        )
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ResultsError(f"benchmark row {i}: metric name {name!r} is not a non-empty string")
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ResultsError(f"benchmark row {i}: metric {name!r} is {value!r}; expected a finite float")


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    """Validate rows against RESULTS_SCHEMA and return them as a table."""
    names = set(RESULTS_SCHEMA.names)
    for i, row in enumerate(rows):
        missing, extra = names - set(row), set(row) - names
        if missing or extra:
            raise ResultsError(
                f"benchmark row {i}: missing fields {sorted(missing)}, unexpected fields {sorted(extra)}"
            )
        _check_metrics(i, row["metrics"])
        if not isinstance(row["class_iou"], dict):
            raise ResultsError(f"benchmark row {i}: class_iou is {row['class_iou']!r}; expected a dict")
    # pyarrow takes a map cell as a list of (key, value) pairs
    data = [
        {
            **row,
            "metrics": [(k, float(v)) for k, v in row["metrics"].items()],
            "class_iou": list(row["class_iou"].items()),
        }
        for row in rows
    ]
    try:
        return pa.Table.from_pylist(data, schema=RESULTS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ResultsError(f"benchmark rows do not fit the schema: {_bad_row(data)}{err}") from None


def _bad_row(data: list[dict[str, Any]]) -> str:
    """Return 'row I: ' for the first row pyarrow refuses on its own (its batch error does not say which), else ''."""
    for i, row in enumerate(data):
        try:
            pa.Table.from_pylist([row], schema=RESULTS_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return f"row {i}: "
    return ""


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


#: Subfolder of a results folder holding the config of every row: CONFIG_DIR/<config_hash>.json.
CONFIG_DIR = "configs"


def store_config(table_dir: str, config_hash: str, config: dict[str, Any]) -> str:
    """Store the config a row's config_hash names (what the learner's hash() covers) as CONFIG_DIR/HASH.json, once;
    return its URL. A config whose digest is not `config_hash` is refused: the name is the check on read."""
    if digest(config) != config_hash:
        raise ResultsError(f"store_config: the config's sha256 is {digest(config)}, not the row's {config_hash}")
    url = join(table_dir, CONFIG_DIR, f"{config_hash}.json")
    if not exists(url):  # content-addressed: an existing file holds these very bytes (checked when read)
        atomic_write_bytes(url, json.dumps(config, indent=1, sort_keys=True).encode())
    return url


def read_config(table_dir: str, prefix: str) -> tuple[str, dict[str, Any]]:
    """Return (full hash, config) of the one stored config whose hash starts with `prefix` (4 to 64 hex digits);
    none, several, or a file whose content does not hash to its name is a ResultsError naming it."""
    prefix = prefix.lower()
    if not 4 <= len(prefix) <= 64 or any(c not in "0123456789abcdef" for c in prefix):
        raise ResultsError(f"config hash {prefix!r}: expected 4 to 64 hex digits (the config column of results ls)")
    folder = join(table_dir, CONFIG_DIR)
    names = []
    if exists(folder):
        fs, path = resolve(folder)
        if not fs.isdir(path):
            raise ResultsError(f"{folder}: is a file; expected the folder of stored configs (HASH.json)")
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    found = [n.removesuffix(".json") for n in names if n.startswith(prefix) and n.endswith(".json")]
    if not found:
        raise ResultsError(
            f"{folder}: no stored config {prefix}... (configs are stored with rows appended since maskforge stored "
            "them; older rows have only their hash)"
        )
    if len(found) > 1:
        raise ResultsError(f"{folder}: {len(found)} stored configs start with {prefix}: {found}; give more digits")
    url = join(folder, f"{found[0]}.json")
    try:
        config = json.loads(read_bytes(url))
    except ValueError as err:
        raise ResultsError(f"{url}: not a JSON config ({err})") from None
    except OSError as err:  # a folder or an unreadable file under a stored config's name
        raise ResultsError(f"{url}: cannot be read as a stored config ({err.strerror or err})") from None
    if not isinstance(config, dict) or digest(config) != found[0]:
        raise ResultsError(f"{url}: its content does not hash to its name; the file was changed after it was stored")
    return found[0], config


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
        except OSError as err:  # a folder or an unreadable file under a table file's name
            raise ResultsError(f"{url}: cannot be read as a table file ({err.strerror or err})") from None
        if table.schema.equals(OLD_RESULTS_SCHEMA):
            table = _from_old(table)
        elif not table.schema.equals(RESULTS_SCHEMA):
            raise ResultsError(
                f"{url}: schema differs from the benchmark schema; expected the columns {RESULTS_SCHEMA.names} "
                f"(or the earlier HSNet-only columns {OLD_RESULTS_SCHEMA.names})"
            )
        tables.append(table)
    return pa.concat_tables(tables) if tables else RESULTS_SCHEMA.empty_table()


def _from_old(table: pa.Table) -> pa.Table:
    """Convert a table of OLD_RESULTS_SCHEMA: HSNet episodes, metrics {miou, fb_iou}, evaluated = episodes, 1 run."""
    n = table.num_rows
    scores = np.column_stack([table.column("miou").to_numpy(), table.column("fb_iou").to_numpy()]).ravel()
    metrics = pa.MapArray.from_arrays(
        pa.array(np.arange(0, 2 * n + 1, 2), pa.int32()),
        pa.array(["miou", "fb_iou"] * n, pa.string()),
        pa.array(scores, pa.float64()),
        type=_FLOAT_MAP,
    )
    new = {
        "protocol": pa.array([HSNET_PROTOCOL] * n, pa.string()),
        "evaluated": table.column("episodes"),
        "runs": pa.array(np.ones(n, np.int64)),
        "metrics": metrics,
    }
    return pa.Table.from_arrays(
        [new[name] if name in new else table.column(name) for name in RESULTS_SCHEMA.names], schema=RESULTS_SCHEMA
    )


#: Columns of a row other than its two maps, in schema order (what select_rows filters on and csv_text writes).
SCALAR_COLUMNS = tuple(name for name in RESULTS_SCHEMA.names if name not in ("metrics", "class_iou"))


def select_rows(rows: list[dict[str, Any]], last: int | None = None, **equal: Any) -> list[dict[str, Any]]:
    """Return the rows whose columns equal every given value (None: any), oldest first, the last `last` of them.

    Rows are ordered by created_at, ties kept in table order (files in name order); `equal` names scalar columns.
    """
    unknown = sorted(set(equal) - set(SCALAR_COLUMNS))
    if unknown:
        raise ResultsError(f"select_rows: no column {unknown}; expected some of {list(SCALAR_COLUMNS)}")
    chosen = [r for r in rows if all(v is None or r[k] == v for k, v in equal.items())]
    chosen = sorted(chosen, key=lambda r: r["created_at"])
    return chosen[-last:] if last else chosen


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Return rows as CSV: the scalar columns, then one `metric:NAME` column per metric any row has (sorted; empty
    where a row lacks it), values as stored (fractions, full precision); class_iou is left out."""
    names = sorted({name for r in rows for name in dict(r["metrics"])})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*SCALAR_COLUMNS, *(f"metric:{n}" for n in names)])
    for r in rows:
        metrics = dict(r["metrics"])
        writer.writerow([*(r[c] for c in SCALAR_COLUMNS), *(repr(metrics[n]) if n in metrics else "" for n in names)])
    return out.getvalue()


def row_metric(row: dict[str, Any], name: str) -> float:
    """Return the metric `name` of a row whose metrics are a dict or, as to_pylist() gives them, (key, value) pairs."""
    metrics = dict(row["metrics"])
    if name not in metrics:
        raise KeyError(f"metric {name!r} not in this benchmark row; it has {sorted(metrics)}")
    return float(metrics[name])


def rows_as_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """Return the table's rows as dicts, with `metrics` and `class_iou` as dicts instead of (key, value) pairs."""
    return [{**r, "metrics": dict(r["metrics"]), "class_iou": dict(r["class_iou"])} for r in table.to_pylist()]


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
