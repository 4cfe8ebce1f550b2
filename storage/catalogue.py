"""The catalogue of runs: one Parquet row per complete generation run, in OUT_DIR/catalogue/, read back as one table;
and the run selectors (`latest:toy/0`, `last:7:toy/0`) that learners accept instead of a run folder.

Like the benchmark table (storage/results.py), each row is its own file, written atomically when the run completes
(after its marker), so concurrent runs and readers never see a partial table. A row is named by its run folder:
recording a run twice keeps the first row. `rebuild_catalogue` writes the rows of complete runs that lack one (runs
made before the catalogue existed, or a kill between the marker and the row).
"""

from __future__ import annotations

import functools
import io
import json
import re
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from maskforge.storage.fs import atomic_write_bytes, exists, join, read_bytes, resolve
from maskforge.storage.reader import RunReader
from maskforge.storage.shards import CONFIG_NAME, MARKER_NAME

#: The catalogue's folder inside a runs folder (the parent of the run folders).
CATALOGUE_DIR = "catalogue"

CATALOGUE_SCHEMA = pa.schema(
    [
        pa.field("completed_at", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("fold", pa.int64(), nullable=False),
        pa.field("round", pa.int64(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        #: {class name: {source: samples}} as JSON
        pa.field("samples_per_class", pa.string(), nullable=False),
        pa.field("rejected", pa.int64(), nullable=False),
    ]
)

#: `latest:DATASET/FOLD` or `last:N:DATASET/FOLD`, optionally `@RUNS` (the runs folder whose catalogue answers).
SELECTOR = re.compile(
    r"^(?:(?P<latest>latest)|last:(?P<n>\d+)):(?P<dataset>[a-z0-9_-]+)/(?P<fold>\d+)(?:@(?P<root>.+))?$"
)
#: The most runs one selector may name.
MAX_SELECTED = 100


class CatalogueError(ValueError):
    """A catalogue file or a selector that cannot be read or answered: names it and what was expected."""


def is_selector(text: str) -> bool:
    """Whether a run reference is a selector (`latest:` or `last:N:`) rather than a run folder or URL."""
    return text.startswith(("latest:", "last:"))


def catalogue_row(run_url: str, marker: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """Return the catalogue row of a complete run from its marker (summary inside) and its stored config."""
    summary = marker.get("summary") or {}
    per_class = summary.get("samples_per_class") or {}
    rejected = sum((summary.get("ood_rejected") or {}).values()) + sum((summary.get("empty_rejected") or {}).values())
    run = (config or {}).get("run") or {}
    dataset = (config or {}).get("dataset") or {}
    return {
        "completed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "name": run_url.rstrip("/").rsplit("/", 1)[-1],
        "url": run_url,
        "dataset": str(summary.get("dataset", dataset.get("name", ""))),
        "fold": int(summary.get("fold", dataset.get("fold", 0))),
        "round": int(run.get("round", 0) or 0),
        "config_hash": str(summary.get("config_hash", "")),
        "samples": int(summary.get("n_samples", sum(sum(v.values()) for v in per_class.values()))),
        "samples_per_class": json.dumps(per_class, sort_keys=True),
        "rejected": int(rejected),
    }


def record_run(runs_dir: str, row: dict[str, Any]) -> str:
    """Write a run's catalogue row as RUNS_DIR/catalogue/NAME.parquet (atomically; an existing row is kept)."""
    url = join(runs_dir, CATALOGUE_DIR, f"{row['name']}.parquet")
    if not exists(url):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([row], schema=CATALOGUE_SCHEMA), buf)
        atomic_write_bytes(url, buf.getvalue())
    return url


def read_catalogue(runs_dir: str) -> list[dict[str, Any]]:
    """Return every catalogue row of RUNS_DIR, oldest first: by round (a nightly round is newer data than any round 0
    run of the CLI, and a round re-catalogued after a kill keeps its place), then completion time, then name."""
    folder = join(runs_dir, CATALOGUE_DIR)
    if not exists(folder):
        return []
    fs, path = resolve(folder)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    rows = []
    for name in (n for n in names if n.endswith(".parquet") and not n.startswith(".")):
        url = join(folder, name)
        try:
            table = pq.read_table(io.BytesIO(read_bytes(url)))
        except (pa.ArrowInvalid, OSError) as err:
            raise CatalogueError(f"{url}: not a readable catalogue row ({err})") from None
        if not table.schema.equals(CATALOGUE_SCHEMA):
            raise CatalogueError(f"{url}: expected the catalogue columns {CATALOGUE_SCHEMA.names}")
        rows += table.to_pylist()
    return sorted(rows, key=lambda r: (r["round"], r["completed_at"], r["name"]))


def rebuild_catalogue(runs_dir: str) -> list[str]:
    """Write the missing rows of RUNS_DIR's complete runs (a folder with a valid marker); return their URLs."""
    fs, path = resolve(runs_dir)
    if not fs.isdir(path):
        return []
    known = {row["name"] for row in read_catalogue(runs_dir)}
    written = []
    for entry in sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)):
        url = join(runs_dir, entry)
        if entry in known or entry == CATALOGUE_DIR or not exists(join(url, MARKER_NAME)):
            continue
        reader = RunReader(url, verify=False)
        written.append(record_run(runs_dir, catalogue_row(url, reader.marker, reader.config)))
    return written


def select_runs(rows: list[dict[str, Any]], dataset: str | None = None, fold: int | None = None, last: int = 0):
    """Return the rows of a dataset and fold (None: any), the newest `last` of them (0: all), oldest first."""
    chosen = [r for r in rows if dataset in (None, r["dataset"]) and fold in (None, r["fold"])]
    return chosen[-last:] if last else chosen


def resolve_selector(selector: str, default_root: str, field: str) -> list[str]:
    """Return the run URLs a selector names, oldest first: `latest:toy/0` the newest complete run of toy fold 0,
    `last:7:toy/0` the seven newest (fewer if fewer exist), from the catalogue of `@RUNS` or `default_root`.

    A malformed selector, or one that names no run, is a CatalogueError naming `field`, the selector and what the
    catalogue holds."""
    match = SELECTOR.match(selector)
    if not match:
        raise CatalogueError(
            f"{field}: {selector!r} is not a run selector; expected latest:DATASET/FOLD or last:N:DATASET/FOLD "
            "(optionally @RUNS_FOLDER), e.g. latest:toy/0"
        )
    n = 1 if match["latest"] else int(match["n"])
    if not 1 <= n <= MAX_SELECTED:
        raise CatalogueError(f"{field}: {selector!r} asks for {n} runs; expected 1 to {MAX_SELECTED}")
    root = match["root"] or default_root
    rows = read_catalogue(root)
    chosen = select_runs(rows, match["dataset"], int(match["fold"]), n)
    if not chosen:
        held = sorted({f"{r['dataset']}/{r['fold']}" for r in rows})
        raise CatalogueError(
            f"{field}: {selector!r} names no run: the catalogue of {root} lists "
            f"{', '.join(held) if held else 'no run'} (maskforge runs ls {root})"
        )
    return [r["url"] for r in chosen]


@functools.lru_cache(maxsize=1024)
def run_round(url: str) -> int | None:
    """The generation round of the run at `url` (its config.yaml's run.round; 0 for runs made before rounds), None
    when the run or its config cannot be read (moved, removed by gc)."""
    try:
        config = yaml.safe_load(read_bytes(join(url, CONFIG_NAME)))
    except (OSError, yaml.YAMLError):
        return None
    run = (config or {}).get("run") if isinstance(config, dict) else None
    return int((run or {}).get("round", 0) or 0)


def rounds_label(synthetic_source: str) -> str:
    """A benchmark row's synthetic data as rounds: 'none', 'r20261206' (several: comma-joined), '?' if unreadable."""
    if synthetic_source == "none":
        return "none"
    rounds = [run_round(url) for url in synthetic_source.split(",")]
    return ",".join("?" if r is None else f"r{r}" for r in rounds)
