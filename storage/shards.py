"""RunWriter: write samples into WebDataset shards of a run folder, then the manifest, summary and completion marker."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from maskforge.storage.codec import ShardSample, canonical_json, encode_sample, validate_key
from maskforge.storage.fs import atomic_write_bytes, exists, is_local, join, publish_file, read_bytes, resolve
from maskforge.storage.manifest import manifest_row, rows_to_table, table_to_bytes, validate_meta

if TYPE_CHECKING:
    import webdataset as wds

#: File and folder names inside a run folder.
CONFIG_NAME = "config.yaml"
SHARDS_DIR = "shards"
MANIFEST_NAME = "manifest.parquet"
SUMMARY_NAME = "summary.json"
MARKER_NAME = "_COMPLETE.json"
#: Written into the marker so readers can reject layouts they do not understand.
RUN_FORMAT = "maskforge-run/1"
#: Local staging folder inside a local run (same filesystem as shards/, so publishing is a rename).
STAGING_DIR = ".staging"
_PART_SUFFIX = ".part"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class RunExistsError(FileExistsError):
    """The run folder already holds a completion marker: completed runs are never overwritten in place."""


def sha256_file(path: str) -> str:
    """Return the hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_bytes(obj: Any, what: str) -> bytes:
    """Return obj as indented sorted-key JSON bytes with a final newline (stable across runs)."""
    canonical_json(obj, what)  # raises if JSON cannot hold obj exactly
    return (json.dumps(obj, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def write_config(run_url: str, resolved: dict[str, Any]) -> str:
    """Atomically write the resolved config as RUN/config.yaml (sorted keys) and return its URL."""
    if exists(join(run_url, MARKER_NAME)):
        raise RunExistsError(f"run {run_url} is complete ({MARKER_NAME} exists); its config.yaml is not rewritten")
    if not isinstance(resolved, dict):
        raise TypeError(f"resolved config for run {run_url} must be a dict, got {type(resolved).__name__}")
    url = join(run_url, CONFIG_NAME)
    atomic_write_bytes(url, yaml.safe_dump(resolved, sort_keys=True, allow_unicode=True).encode("utf-8"))
    return url


def complete_run(
    run_url: str, manifest: pa.Table, shards: list[dict[str, Any]], summary: dict[str, Any]
) -> dict[str, Any]:
    """Write manifest.parquet, summary.json and last _COMPLETE.json for shards already in RUN/shards/; return it.

    shards: [{name, sha256, bytes, count}] in shard order; RunWriter.finish calls this, and so can code that
    assembles a run from shards written elsewhere.
    """
    marker_url = join(run_url, MARKER_NAME)
    if exists(marker_url):
        raise RunExistsError(f"run {run_url} is already complete ({MARKER_NAME} exists); nothing is overwritten")
    if not isinstance(summary, dict):
        raise TypeError(f"summary for run {run_url} must be a dict, got {type(summary).__name__}")
    summary_bytes = _json_bytes(summary, f"summary of run {run_url}")
    manifest_bytes = table_to_bytes(manifest)
    counts = {entry["name"]: entry["count"] for entry in shards}
    rows_per_shard: dict[str, int] = {}
    for shard in manifest.column("shard").to_pylist():
        rows_per_shard[shard] = rows_per_shard.get(shard, 0) + 1
    if rows_per_shard != counts:
        raise ValueError(f"run {run_url}: manifest rows per shard {rows_per_shard} differ from shard counts {counts}")
    atomic_write_bytes(join(run_url, MANIFEST_NAME), manifest_bytes)
    atomic_write_bytes(join(run_url, SUMMARY_NAME), summary_bytes)
    config_url = join(run_url, CONFIG_NAME)
    marker = {
        "format": RUN_FORMAT,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "config_sha256": hashlib.sha256(read_bytes(config_url)).hexdigest() if exists(config_url) else None,
        "n_samples": manifest.num_rows,
        "shards": [dict(entry) for entry in shards],
        "summary": summary,
    }
    # Checked again right before writing: another writer finishing meanwhile must not be overwritten.
    if exists(marker_url):
        raise RunExistsError(f"run {run_url} got a {MARKER_NAME} from another writer while this one ran")
    atomic_write_bytes(marker_url, _json_bytes(marker, f"marker of run {run_url}"))
    return json.loads(json.dumps(marker))


class RunWriter:
    """Context manager that writes samples into RUN/shards/*.tar and, on finish(), manifest, summary and marker.

    Shards are written by webdataset.ShardWriter into a local staging folder under '.part' names and each one is
    moved to RUN/shards/<prefix>-NNNNNN.tar as soon as it is closed. The marker is written last; a block that exits
    with an exception leaves no marker (readers refuse the run) and removes the staging folder.
    """

    def __init__(
        self,
        run_url: str,
        max_count: int = 1000,
        max_bytes: int = 500_000_000,
        jpeg_quality: int = 95,
        shard_prefix: str = "shard",
    ) -> None:
        """Check the run is not complete, clear leftovers of an unfinished earlier attempt and prepare staging."""
        if not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"max_count must be an int >= 1, got {max_count!r}")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
        if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an int in 1..100, got {jpeg_quality!r}")
        if not isinstance(shard_prefix, str) or not _PREFIX_RE.match(shard_prefix):
            raise ValueError(f"shard_prefix {shard_prefix!r} must match {_PREFIX_RE.pattern}")
        self.run_url = run_url
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.jpeg_quality = jpeg_quality
        self.shard_prefix = shard_prefix
        self._fs, self._run_path = resolve(run_url)
        if exists(join(run_url, MARKER_NAME)):
            raise RunExistsError(
                f"run {run_url} is already complete ({MARKER_NAME} exists); write to a new run folder instead"
            )
        self._clear_unfinished()
        if is_local(self._fs):
            self._staging = os.path.join(self._run_path, STAGING_DIR)
            os.makedirs(self._staging)
        else:
            self._staging = tempfile.mkdtemp(prefix="maskforge-staging-")
        self._writer: wds.ShardWriter | None = None
        self._keys: set[str] = set()
        self._rows: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}
        self._published: dict[str, dict[str, Any]] = {}
        self._aborting = False
        self._state = "open"  # open -> finished | aborted

    def _clear_unfinished(self) -> None:
        """Remove shards, manifest and summary an interrupted earlier attempt left, so they cannot mix into this run."""
        shard_dir = join(self.run_url, SHARDS_DIR)
        stale = [join(self.run_url, MANIFEST_NAME), join(self.run_url, SUMMARY_NAME)]
        if exists(shard_dir):
            stale += [
                join(shard_dir, os.path.basename(p))
                for p in self._fs.ls(resolve(shard_dir)[1], detail=False)
                if os.path.basename(p).startswith(f"{self.shard_prefix}-")
            ]
        for url in stale:
            fs, path = resolve(url)
            if fs.exists(path):
                fs.rm(path)
        if is_local(self._fs):
            shutil.rmtree(os.path.join(self._run_path, STAGING_DIR), ignore_errors=True)

    def __enter__(self) -> RunWriter:
        """Return self; the writer is ready as soon as it is constructed."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Abort on an exception (no marker, staging removed); a clean exit without finish() is itself an error."""
        if self._state != "open":
            return
        self.abort()
        if exc_type is None:
            raise RuntimeError(
                f"RunWriter for {self.run_url} left its with-block without finish(summary); no marker written"
            )

    @property
    def n_samples(self) -> int:
        """Number of samples written so far."""
        return len(self._rows)

    def _require_open(self) -> None:
        """Raise unless samples may still be written."""
        if self._state != "open":
            raise RuntimeError(f"RunWriter for {self.run_url} is {self._state}; no more samples can be written")

    def _final_name(self, staged_path: str) -> str:
        """Return the published shard name for a staging path ('shard-000003.tar.part' -> 'shard-000003.tar')."""
        name = os.path.basename(staged_path)
        if not name.endswith(_PART_SUFFIX):
            raise RuntimeError(f"unexpected staged shard name {staged_path!r}: expected a '{_PART_SUFFIX}' suffix")
        return name[: -len(_PART_SUFFIX)]

    def _post(self, staged_path: str) -> None:
        """ShardWriter post hook: hash the closed shard and move it to RUN/shards/ (discard it when aborting)."""
        if self._aborting:
            # A publish that failed half-way may already have moved the file; either way it must not stay staged.
            if os.path.exists(staged_path):
                os.remove(staged_path)
            return
        name = self._final_name(staged_path)
        self._published[name] = {
            "name": name,
            "sha256": sha256_file(staged_path),
            "bytes": os.path.getsize(staged_path),
            "count": self._counts.get(name, 0),
        }
        publish_file(staged_path, join(self.run_url, SHARDS_DIR, name))

    def _open_writer(self) -> wds.ShardWriter:
        """Start the ShardWriter lazily: it creates its first file at construction, and a run may have no samples."""
        import webdataset as wds  # only where shards are written: stage code and benches import this module without it

        pattern = os.path.join(self._staging, f"{self.shard_prefix}-%06d.tar{_PART_SUFFIX}")
        return wds.ShardWriter(
            pattern,
            maxcount=self.max_count,
            maxsize=self.max_bytes,
            post=self._post,
            verbose=0,
            # mtime=0 makes member headers independent of the wall clock (byte-identical reruns); encoder=False
            # because encode_sample already produced bytes and webdataset must not re-encode them.
            mtime=0,
            encoder=False,
        )

    def write(self, sample: ShardSample) -> str:
        """Validate, encode and append one sample; return the name of the shard it landed in."""
        self._require_open()
        key = validate_key(sample.key)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in run {self.run_url}")
        if not isinstance(sample.meta, dict):
            raise TypeError(f"sample {key!r}: meta must be a dict, got {type(sample.meta).__name__}")
        validate_meta(key, sample.meta)
        fields = encode_sample(sample, jpeg_quality=self.jpeg_quality)
        if self._writer is None:
            self._writer = self._open_writer()
        self._writer.write(fields)
        # ShardWriter rolls over *before* writing, so after write() its current fname is this sample's shard.
        shard = self._final_name(self._writer.fname)
        self._counts[shard] = self._counts.get(shard, 0) + 1
        self._keys.add(key)
        height, width = sample.image.shape[:2]
        self._rows.append(manifest_row(key, shard, sample.meta, width=width, height=height))
        return shard

    def abort(self) -> None:
        """Stop without a marker: discard the open shard and staging; shards already published stay as they are."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._aborting = True
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._writer = None
            shutil.rmtree(self._staging, ignore_errors=True)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Publish the last shard, write manifest.parquet, summary.json, then _COMPLETE.json; return the marker."""
        self._require_open()
        if not isinstance(summary, dict):
            raise TypeError(f"summary for run {self.run_url} must be a dict, got {type(summary).__name__}")
        canonical_json(summary, f"summary of run {self.run_url}")  # fail before closing anything
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            shards = [self._published[name] for name in sorted(self._published)]
            if sorted(self._counts) != [s["name"] for s in shards]:
                raise RuntimeError(
                    f"run {self.run_url}: shards written {sorted(self._counts)} but published {sorted(self._published)}"
                )
            marker = complete_run(self.run_url, rows_to_table(self._rows), shards, summary)
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        shutil.rmtree(self._staging, ignore_errors=True)
        return marker
