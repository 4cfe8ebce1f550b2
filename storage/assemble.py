"""Assemble a run from completed parts: move their shards into RUN/shards, merge manifests, write the marker last."""

from __future__ import annotations

import pyarrow as pa

from maskforge.storage.fs import exists, join, move, remove_tree
from maskforge.storage.reader import RunReader
from maskforge.storage.shards import MARKER_NAME, SHARDS_DIR, complete_run

PARTS_DIR = "parts"


def is_complete(url: str) -> bool:
    """Return whether a run or part folder holds a completion marker (RunReader checks that it is valid)."""
    return exists(join(url, MARKER_NAME))


def assemble_run(run_url: str, part_urls: list[str], summary: dict) -> dict:
    """Combine completed part folders (each a run with its own marker) into RUN; return the run's marker.

    Parts are read strictly (a part without a valid marker is an error naming it), their shards are moved
    (renamed, bytes untouched) into RUN/shards/, the manifests are concatenated in part order, and the run's
    manifest, summary and marker are written by complete_run. The parts folder is removed afterwards.
    """
    if not part_urls:
        raise ValueError(f"run {run_url}: no parts to assemble")
    parts = [(url, RunReader(url)) for url in part_urls]
    manifest = pa.concat_tables([reader.manifest for _, reader in parts])
    shards = [entry for _, reader in parts for entry in reader.marker["shards"]]
    names = [s["name"] for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"run {run_url}: parts {part_urls} share shard names; give each part its own prefix")
    keys = manifest.column("key").to_pylist()
    if len(set(keys)) != len(keys):
        raise ValueError(f"run {run_url}: parts {part_urls} hold duplicate sample keys")
    for url, reader in parts:
        for entry in reader.marker["shards"]:
            move(join(url, SHARDS_DIR, entry["name"]), join(run_url, SHARDS_DIR, entry["name"]))
    marker = complete_run(run_url, manifest, shards, summary)
    remove_tree(join(run_url, PARTS_DIR))
    return marker
