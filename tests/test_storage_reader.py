"""RunReader: refusal of incomplete or tampered runs, partial reads, iteration, random access, memory:// runs."""

import json
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from maskforge.storage.codec import ShardSample, decode_sample, encode_sample
from maskforge.storage.reader import RunIncompleteError, RunReader, open_shard_streams
from maskforge.storage.shards import RunWriter, write_config


def make_sample(i: int) -> ShardSample:
    """A 12x18 sample with two classes (one an FSS-style id > 254) and an ignore column."""
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    label = np.zeros((12, 18), dtype=np.int32)
    label[2:6, 3:9] = 300 + i
    label[7:10, 10:15] = 4
    label[:, 0] = -1
    meta = {
        "dataset": "fss",
        "fold": 0,
        "class_id": 300 + i,
        "class_name": f"class{i}",
        "source": "copy_paste",
        "mask_method": "gt",
        "seed": i,
        "shot_ids": ["a"],
        "scores": {"q": 1.0},
        "config_hash": "h",
    }
    extras = {"coarse.png": label > 0}
    return ShardSample(f"fold0/c{300 + i}/cp-{i:03d}", image, label, meta, extras)


SAMPLES = [make_sample(i) for i in range(5)]


def expected(sample: ShardSample) -> ShardSample:
    """What a reader must return: the stored JPEG decoded, everything else exactly as written."""
    return decode_sample(encode_sample(sample))


def assert_same(a: ShardSample, b: ShardSample) -> None:
    assert a.key == b.key and a.meta == b.meta
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.label.dtype == b.label.dtype == np.int32
    assert sorted(a.extras) == sorted(b.extras)
    for name in a.extras:
        np.testing.assert_array_equal(a.extras[name], b.extras[name])


def write(run: str, n: int = 5, fail_after: int | None = None) -> None:
    """Write SAMPLES[:n] in shards of 2; raise after fail_after samples to simulate an interruption."""
    write_config(run, {"seed": 1, "name": "r"})
    with RunWriter(run, max_count=2) as writer:
        for i, sample in enumerate(SAMPLES[:n]):
            if i == fail_after:
                raise RuntimeError("interrupted")
            writer.write(sample)
        writer.finish({"n_samples": n})


@pytest.fixture
def run(tmp_path) -> str:
    url = str(tmp_path / "run")
    write(url)
    return url


def test_iteration_yields_the_written_samples_in_order(run):
    reader = RunReader(run)
    assert reader.complete and reader.problems == ()
    got = list(reader)
    assert [s.key for s in got] == [s.key for s in SAMPLES] == reader.keys()
    for sample, original in zip(got, SAMPLES):
        assert_same(sample, expected(original))
    assert len(reader) == 5
    assert reader.summary == {"n_samples": 5}
    assert reader.config == {"seed": 1, "name": "r"}
    assert reader.marker["n_samples"] == 5
    assert reader.manifest.column("key").to_pylist() == reader.keys()
    assert [u.rsplit("/", 1)[-1] for u in reader.shard_urls()] == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]


def test_get_equals_the_iterated_sample(run):
    reader = RunReader(run)
    by_key = {s.key: s for s in reader}
    for key in reversed(reader.keys()):
        assert_same(reader.get(key), by_key[key])
    with pytest.raises(KeyError, match=f"'fold0/nope' is not in run {run}"):
        reader.get("fold0/nope")


def test_missing_marker_is_refused_and_partial_reads_published_shards(tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="interrupted"):
        write(run, fail_after=3)
    with pytest.raises(RunIncompleteError, match=f"run {run} .*no _COMPLETE.json marker"):
        RunReader(run)
    reader = RunReader(run, allow_partial=True)
    assert not reader.complete and reader.marker is None and reader.summary is None
    assert reader.config == {"seed": 1, "name": "r"}
    # shard 0 (2 samples) was published; the third sample was in the open shard and was discarded
    assert [s.key for s in reader] == [s.key for s in SAMPLES[:2]] == reader.keys()
    assert_same(reader.get(SAMPLES[1].key), expected(SAMPLES[1]))
    with pytest.raises(RunIncompleteError, match="no manifest.parquet"):
        reader.manifest


def test_tampered_manifest_is_refused(run):
    path = Path(run) / "manifest.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RunIncompleteError, match="manifest.parquet sha256 .* does not match"):
        RunReader(run)
    reader = RunReader(run, allow_partial=True)
    assert not reader.complete and len(reader.problems) == 1
    assert [s.key for s in reader] == [s.key for s in SAMPLES]


def test_missing_or_resized_shard_is_refused(run, tmp_path):
    size = (tmp_path / "run" / "shards" / "shard-000001.tar").stat().st_size
    with open(f"{run}/shards/shard-000001.tar", "ab") as handle:
        handle.write(b"\0" * 512)
    with pytest.raises(RunIncompleteError, match=f"shard-000001.tar has {size + 512} bytes, marker says {size}"):
        RunReader(run)
    (tmp_path / "run" / "shards" / "shard-000002.tar").unlink()
    with pytest.raises(RunIncompleteError, match="shard-000002.tar is missing"):
        RunReader(run)


def test_verify_shards_catches_same_size_corruption(run):
    path = Path(run) / "shards" / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01  # inside the first member's payload; size unchanged
    path.write_bytes(bytes(data))
    reader = RunReader(run)  # the cheap open-time check compares sizes only
    with pytest.raises(RunIncompleteError, match="shard-000000.tar sha256"):
        reader.verify_shards()


def test_edited_summary_is_refused(run):
    with open(f"{run}/summary.json", "w") as handle:
        json.dump({"n_samples": 6}, handle)
    with pytest.raises(RunIncompleteError, match="summary.json differs"):
        RunReader(run)


def test_memory_url_round_trip():
    url = f"memory://storage-test-{uuid.uuid4().hex}/run"
    write(url)
    try:
        reader = RunReader(url)
        assert all(u.startswith("memory://") for u in reader.shard_urls())
        got = list(reader)
        assert [s.key for s in got] == [s.key for s in SAMPLES]
        for sample, original in zip(got, SAMPLES):
            assert_same(sample, expected(original))
        assert_same(reader.get(SAMPLES[3].key), got[3])
        with pytest.raises(ValueError, match="needs a local run"):
            reader.webdataset()
    finally:
        fsspec.filesystem("memory").rm(url.split("://", 1)[1].split("/", 1)[0], recursive=True)


def test_open_shard_streams_closes_each_stream_after_use(run):
    reader = RunReader(run)
    streams = []
    for source in open_shard_streams({"url": u} for u in reader.shard_urls()):
        assert not source["stream"].closed
        streams.append(source["stream"])
    assert len(streams) == 3 and all(s.closed for s in streams)


def test_webdataset_pipeline_for_training(run):
    reader = RunReader(run)
    assert [s.key for s in reader.webdataset()] == reader.keys()
    first = [s.key for s in reader.webdataset(shuffle=4, seed=3)]
    assert sorted(first) == sorted(reader.keys())
    assert [s.key for s in reader.webdataset(shuffle=4, seed=3)] == first  # same seed, same order
    with pytest.raises(ValueError, match="shuffle"):
        reader.webdataset(shuffle=-1)


def test_a_truncated_shard_read_as_partial_is_named(run):
    shard = Path(run) / "shards" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:700])  # cut inside the first member
    reader = RunReader(run, allow_partial=True)  # the marker no longer matches: keys come from the tar headers
    with pytest.raises(RunIncompleteError, match=r"shards/shard-000001\.tar is not a readable tar file"):
        reader.get(SAMPLES[0].key)
