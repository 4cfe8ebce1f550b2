"""RunReader: verify a run folder's completion marker, then stream, index or randomly access its samples."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import yaml

from maskforge.storage.codec import ShardSample, decode_sample
from maskforge.storage.fs import exists, is_local, join, read_bytes, resolve
from maskforge.storage.manifest import ManifestError, read_manifest, table_from_bytes
from maskforge.storage.shards import CONFIG_NAME, MANIFEST_NAME, MARKER_NAME, RUN_FORMAT, SHARDS_DIR, SUMMARY_NAME

if TYPE_CHECKING:
    import webdataset as wds

_MARKER_FIELDS = ("format", "manifest_sha256", "config_sha256", "n_samples", "shards", "summary")


class RunIncompleteError(RuntimeError):
    """A run folder without a valid completion marker, or whose files disagree with it."""


class ShardCorruptError(RunIncompleteError):
    """A shard whose bytes hash to something other than the sha256 its run's completion marker recorded."""


class HashingStream:
    """A read-only file wrapper that hashes every byte read through it: one read both serves and verifies a shard."""

    def __init__(self, stream, name: str) -> None:
        """Wrap `stream`; `name` (the shard's) appears in errors."""
        self.stream, self.name = stream, name
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """Read and hash."""
        data = self.stream.read(size)
        self.digest.update(data)
        return data

    def finish(self, expected: str, run_url: str) -> None:
        """Hash what the consumer left unread (tar padding), then raise ShardCorruptError unless the digest matches."""
        for block in iter(lambda: self.read(1 << 20), b""):
            pass
        if self.digest.hexdigest() != expected:
            raise _corrupt(run_url, self.name, self.digest.hexdigest(), expected)


def _corrupt(run_url: str, name: str, got: str, expected: str, context: str = "") -> ShardCorruptError:
    """Return the error of a shard whose sha256 differs from the marker's (`context`: what was being read)."""
    return ShardCorruptError(
        f"run {run_url}: shard {SHARDS_DIR}/{name} is corrupted: sha256 {got} != {expected} recorded in "
        f"{MARKER_NAME} (samples already read from it are not to be trusted){context}"
    )


def _json_or_none(data: bytes) -> Any:
    """Return parsed JSON, or None for bytes that are not JSON (callers report that as a mismatch)."""
    try:
        return json.loads(data)
    except ValueError:
        return None


def open_shard_streams(
    sources: Iterable[dict[str, Any]],
    expected: dict[str, str] | None = None,
    run_url: str = "",
    verified: Callable[[str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: open each {'url'} with fsspec and yield {'url', 'stream'}, closing it once it is consumed.

    With `expected` ({shard url: sha256}), each listed stream is hashed as it is read and checked when the consumer
    moves on: a corrupted shard raises ShardCorruptError before the next shard is opened; `verified` is called
    with the name of each shard that matched.
    """
    for source in sources:
        fs, path = resolve(source["url"])
        # tar_file_expander reads a stream to its end before asking for the next one, so closing here is safe.
        with fs.open(path, "rb") as raw:
            sha = (expected or {}).get(source["url"])
            stream = raw if sha is None else HashingStream(raw, source["url"].rsplit("/", 1)[-1])
            yield {**source, "stream": stream}
            if sha is not None:
                stream.finish(sha, run_url)
                if verified is not None:
                    verified(stream.name)


class RunReader:
    """Read-only view of a run folder (local path or fsspec URL); refuses incomplete runs unless allow_partial=True."""

    def __init__(self, run_url: str, allow_partial: bool = False, verify: bool = True) -> None:
        """Check the marker against manifest, shards, summary and config; raise RunIncompleteError on any problem.

        With `verify` (the default), every shard the marker lists is checked against its recorded sha256 the first
        time this reader reads it: iteration hashes shards as it streams them (one read), random access hashes a
        shard before returning its first sample. `verify=False` is the explicit opt-out.
        """
        self.run_url = run_url
        self.verify = verify
        self._verified: set[str] = set()
        self._fs, self._path = resolve(run_url)
        if not self._fs.exists(self._path):
            raise RunIncompleteError(f"{run_url}: no such run folder")
        if not self._fs.isdir(self._path):
            raise RunIncompleteError(f"{run_url}: not a run folder (a file); expected a folder holding {MARKER_NAME}")
        self._marker: dict[str, Any] | None = None
        self._manifest: pa.Table | None = None
        self._members: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}
        self._index: dict[str, str] | None = None
        #: What is missing or invalid; empty for a complete, consistent run.
        self.problems: tuple[str, ...] = tuple(self._check())
        if self.problems and not allow_partial:
            raise RunIncompleteError(f"run {run_url} is incomplete or invalid: " + "; ".join(self.problems))
        #: {shard name: sha256} the marker records (empty without a valid marker): what reads are verified against.
        self._digests = {entry["name"]: entry["sha256"] for entry in self._marker["shards"]} if self._marker else {}
        if self.complete:
            self._shard_names = [entry["name"] for entry in self._marker["shards"]]
        else:
            self._shard_names = self._present_shards()

    @property
    def complete(self) -> bool:
        """True when the marker exists and manifest, shards, summary and config agree with it."""
        return not self.problems

    def _check(self) -> list[str]:
        """Return the list of problems that make this run incomplete (empty when it is complete and consistent)."""
        marker_url = join(self.run_url, MARKER_NAME)
        if not exists(marker_url):
            return [f"no {MARKER_NAME} marker (the writer did not finish)"]
        try:
            marker = json.loads(read_bytes(marker_url))
        except ValueError as exc:
            return [f"{MARKER_NAME} is not valid JSON: {exc}"]
        if not isinstance(marker, dict) or any(name not in marker for name in _MARKER_FIELDS):
            return [f"{MARKER_NAME} must be an object with fields {list(_MARKER_FIELDS)}"]
        if marker["format"] != RUN_FORMAT:
            return [f"{MARKER_NAME} has format {marker['format']!r}, this reader understands {RUN_FORMAT!r}"]
        self._marker = marker
        problems = self._check_manifest(marker) + self._check_shards(marker)
        summary_url = join(self.run_url, SUMMARY_NAME)
        if not exists(summary_url):
            problems.append(f"{SUMMARY_NAME} is missing")
        elif _json_or_none(read_bytes(summary_url)) != marker["summary"]:
            problems.append(f"{SUMMARY_NAME} differs from the summary recorded in {MARKER_NAME}")
        config_url = join(self.run_url, CONFIG_NAME)
        if marker["config_sha256"] is not None:
            if not exists(config_url):
                problems.append(f"{CONFIG_NAME} is missing but {MARKER_NAME} records its sha256")
            elif hashlib.sha256(read_bytes(config_url)).hexdigest() != marker["config_sha256"]:
                problems.append(f"{CONFIG_NAME} sha256 differs from {MARKER_NAME}'s {marker['config_sha256']}")
        return problems

    def _check_manifest(self, marker: dict[str, Any]) -> list[str]:
        """Return manifest.parquet problems: missing, hash mismatch, bad schema, rows disagreeing with the marker."""
        manifest_url = join(self.run_url, MANIFEST_NAME)
        if not exists(manifest_url):
            return [f"{MANIFEST_NAME} is missing"]
        data = read_bytes(manifest_url)
        digest = hashlib.sha256(data).hexdigest()
        if digest != marker["manifest_sha256"]:
            return [f"{MANIFEST_NAME} sha256 {digest} does not match {MARKER_NAME}'s {marker['manifest_sha256']}"]
        try:
            table = table_from_bytes(data, manifest_url)
        except ManifestError as exc:
            return [str(exc)]
        self._manifest = table
        if table.num_rows != marker["n_samples"]:
            return [f"{MANIFEST_NAME} has {table.num_rows} rows but {MARKER_NAME} says n_samples={marker['n_samples']}"]
        counts: dict[str, int] = {}
        for shard in table.column("shard").to_pylist():
            counts[shard] = counts.get(shard, 0) + 1
        expected = {entry["name"]: entry["count"] for entry in marker["shards"]}
        if counts != expected:
            return [f"{MANIFEST_NAME} rows per shard {counts} differ from {MARKER_NAME}'s {expected}"]
        return []

    def _check_shards(self, marker: dict[str, Any]) -> list[str]:
        """Return problems with the shards the marker lists: missing files or sizes other than recorded."""
        problems = []
        for entry in marker["shards"]:
            fs, path = resolve(join(self.run_url, SHARDS_DIR, entry["name"]))
            if not fs.exists(path):
                problems.append(f"shard {SHARDS_DIR}/{entry['name']} is missing")
            elif fs.size(path) != entry["bytes"]:
                size = fs.size(path)
                problems.append(f"shard {SHARDS_DIR}/{entry['name']} has {size} bytes, marker says {entry['bytes']}")
        return problems

    def _present_shards(self) -> list[str]:
        """Return the names of published shards (final '.tar' names; '.part' uploads excluded), sorted."""
        shard_dir = join(self.run_url, SHARDS_DIR)
        if not exists(shard_dir):
            return []
        fs, path = resolve(shard_dir)
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        return sorted(name for name in names if name.endswith(".tar"))

    @property
    def marker(self) -> dict[str, Any] | None:
        """The parsed _COMPLETE.json (None when a partial run has none or an unreadable one)."""
        return self._marker

    @property
    def manifest(self) -> pa.Table:
        """The manifest table; partial runs return manifest.parquet if present (unverified), else raise."""
        if self._manifest is not None:
            return self._manifest
        manifest_url = join(self.run_url, MANIFEST_NAME)
        if not exists(manifest_url):
            problems = "; ".join(self.problems)
            raise RunIncompleteError(f"run {self.run_url} has no {MANIFEST_NAME} (problems: {problems})")
        self._manifest = read_manifest(manifest_url)
        return self._manifest

    @property
    def summary(self) -> dict[str, Any] | None:
        """The run summary from summary.json (None when a partial run has none)."""
        url = join(self.run_url, SUMMARY_NAME)
        return json.loads(read_bytes(url)) if exists(url) else None

    @property
    def config(self) -> dict[str, Any] | None:
        """The resolved config from config.yaml (None when absent)."""
        url = join(self.run_url, CONFIG_NAME)
        return yaml.safe_load(read_bytes(url)) if exists(url) else None

    def shard_urls(self) -> list[str]:
        """Return the shard URLs in shard order (the marker's list, or the published files of a partial run)."""
        return [join(self.run_url, SHARDS_DIR, name) for name in self._shard_names]

    def _shard_members(self, name: str) -> dict[str, dict[str, tuple[int, int]]]:
        """Return {key: {field: (data offset, size)}} for one shard, read from its tar headers once and cached."""
        if name not in self._members:
            # webdataset only where shards are read: the benches and stage code import this module without it
            from webdataset.tariterators import base_plus_ext

            members: dict[str, dict[str, tuple[int, int]]] = {}
            fs, path = resolve(join(self.run_url, SHARDS_DIR, name))
            try:
                with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
                    for info in archive:
                        if not info.isreg():
                            continue
                        key, field = base_plus_ext(info.name)  # the same split webdataset's readers use
                        if key is None:
                            continue
                        members.setdefault(key, {})[field.lower()] = (info.offset_data, info.size)
            except tarfile.TarError as err:  # a truncated or damaged shard read without its marker (allow_partial)
                raise RunIncompleteError(
                    f"run {self.run_url}: {SHARDS_DIR}/{name} is not a readable tar file ({err})"
                ) from None
            self._members[name] = members
        return self._members[name]

    def _key_index(self) -> dict[str, str]:
        """Return {key: shard name}: from the manifest for complete runs, from the shards' tar headers otherwise."""
        if self._index is None:
            if self.complete:
                table = self.manifest
                self._index = dict(zip(table.column("key").to_pylist(), table.column("shard").to_pylist()))
            else:
                index: dict[str, str] = {}
                for name in self._shard_names:
                    for key in self._shard_members(name):
                        if key in index:
                            raise RunIncompleteError(
                                f"run {self.run_url}: key {key!r} is in shards {index[key]} and {name}"
                            )
                        index[key] = name
                self._index = index
        return self._index

    def keys(self) -> list[str]:
        """Return all sample keys in shard order."""
        return list(self._key_index())

    def __len__(self) -> int:
        """Return the number of samples."""
        return len(self._key_index())

    def __iter__(self) -> Iterator[ShardSample]:
        """Yield decoded samples in shard order through a webdataset pipeline (works for paths and fsspec URLs)."""
        urls = self.shard_urls()
        if not urls:
            return iter(())  # SimpleShardList rejects an empty list; a run with no samples simply yields nothing
        import webdataset as wds
        from webdataset.tariterators import group_by_keys, tar_file_expander

        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls),
            partial(
                open_shard_streams, expected=self._expected_digests(), run_url=self.run_url, verified=self._verified.add
            ),
            tar_file_expander,
            group_by_keys,
            wds.map(decode_sample),
        )
        return iter(pipeline)

    def get(self, key: str) -> ShardSample:
        """Return one sample by key, reading only its members from the shard the manifest names."""
        shard = self._key_index().get(key)
        if shard is None:
            raise KeyError(f"key {key!r} is not in run {self.run_url}")
        fields = self._shard_members(shard).get(key)
        if fields is None:
            raise RunIncompleteError(
                f"run {self.run_url}: manifest puts key {key!r} in {shard}, but that shard lacks it"
            )
        self._verify_shard(shard, f" (reading {key!r})")
        url = join(self.run_url, SHARDS_DIR, shard)
        fs, path = resolve(url)
        sample: dict[str, Any] = {"__key__": key, "__url__": url}
        with fs.open(path, "rb") as handle:
            for field, (offset, size) in fields.items():
                handle.seek(offset)
                sample[field] = handle.read(size)
        return decode_sample(sample)

    def _expected_digests(self) -> dict[str, str]:
        """Return {shard url: recorded sha256} of the shards still to verify (none when verify is off or no marker)."""
        if not self.verify:
            return {}
        return {
            join(self.run_url, SHARDS_DIR, name): sha
            for name, sha in self._digests.items()
            if name not in self._verified
        }

    def _sha256(self, name: str) -> str:
        """Return the sha256 of one shard's bytes, read in 1 MiB blocks."""
        fs, path = resolve(join(self.run_url, SHARDS_DIR, name))
        digest = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def _verify_shard(self, name: str, context: str = "") -> None:
        """Hash one listed shard once per reader (when verify is on) and raise ShardCorruptError on a mismatch."""
        expected = self._digests.get(name)
        if not self.verify or expected is None or name in self._verified:
            return
        got = self._sha256(name)
        if got != expected:
            raise _corrupt(self.run_url, name, got, expected, context)
        self._verified.add(name)

    def verify_shards(self) -> None:
        """Hash every listed shard against the marker (reads all bytes); raise RunIncompleteError on a mismatch.

        Verified shards are not hashed again by later reads of this reader.
        """
        if self._marker is None:
            raise RunIncompleteError(f"run {self.run_url} has no valid {MARKER_NAME} to verify shards against")
        bad = []
        for name, expected in self._digests.items():
            got = self._sha256(name)
            if got != expected:
                bad.append(f"{SHARDS_DIR}/{name} sha256 {got} != {expected}")
            else:
                self._verified.add(name)
        if bad:
            raise RunIncompleteError(f"run {self.run_url} has corrupted shards: " + "; ".join(bad))

    def webdataset(
        self,
        shuffle: int | bool = False,
        seed: int = 0,
        resample: bool = False,
        keys: Iterable[str] | None = None,
    ) -> wds.WebDataset:
        """Return a wds.WebDataset over this local run's shards yielding ShardSamples, for training data loaders.

        shuffle=False (or 0) keeps shard and sample order; shuffle=n > 0 shuffles shards and then samples with a
        buffer of n each; shuffle=True means n=1000. Shuffles are deterministic per (seed, epoch) via detshuffle.
        Shards are split across distributed ranks with wds.split_by_node (RANK/WORLD_SIZE or torch.distributed)
        and across DataLoader workers with webdataset's default split_by_worker, so give each rank x worker at
        least one shard. Local runs only: webdataset opens URLs with its own gopen, which has no fsspec support.
        With verify on, every shard is hashed against the marker here, once per reader, before the dataset is built.
        `resample=True` makes an endless stream for training loops: shards are drawn with replacement (seeded by
        `seed`), and every rank and worker reads from all shards, so a run with fewer shards than workers still feeds
        each of them. `keys` keeps only those samples, selected on the raw key before any decoding.
        """
        import webdataset as wds

        if not is_local(self._fs):
            raise ValueError(
                f"RunReader.webdataset needs a local run; {self.run_url} is not on the local disk "
                "(webdataset opens shards with its own gopen; iterate the RunReader instead)"
            )
        urls = self.shard_urls()
        if not urls:
            raise ValueError(f"run {self.run_url} has no shards to build a WebDataset from")
        for name in self._shard_names:  # webdataset opens shards itself: verify them here, once per reader
            self._verify_shard(name)
        if isinstance(shuffle, bool):
            buffer = 1000 if shuffle else 0
        elif isinstance(shuffle, int) and shuffle >= 0:
            buffer = shuffle
        else:
            raise ValueError(f"shuffle must be a bool or an int >= 0, got {shuffle!r}")
        if resample:
            dataset = wds.WebDataset(
                urls, resampled=True, shardshuffle=False, seed=seed, nodesplitter=None, workersplitter=None
            )
        else:
            dataset = wds.WebDataset(
                urls,
                shardshuffle=buffer if buffer else False,
                detshuffle=True,
                seed=seed,
                nodesplitter=wds.split_by_node,
            )
        if keys is not None:
            wanted = frozenset(keys)
            dataset = dataset.select(lambda fields: fields.get("__key__") in wanted)
        if buffer:
            dataset.append(wds.detshuffle(buffer, seed=seed))
        return dataset.map(decode_sample)
