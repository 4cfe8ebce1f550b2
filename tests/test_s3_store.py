"""Runs and the benchmark table in an S3-compatible store (a moto server on a free port): sha256-verified reads, the
marker written last, listings that see other writers, and the one-line pre-flight errors of a bad bucket,
credentials, endpoint or a missing s3fs."""

import io
import logging
import socket
import sys
import time

import fsspec
import pyarrow.parquet as pq
import pytest
import yaml
from tiny import toy_run
from typer.testing import CliRunner

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.storage.fs import OutputLocationError, check_output_location, resolve
from maskforge.storage.reader import RunReader, ShardCorruptError
from maskforge.storage.results import RESULTS_SCHEMA, append_results, read_config, read_results, store_config
from maskforge.storage.shards import MARKER_NAME
from maskforge.storage.yaml_config import ConfigError, digest
from maskforge.tasks.config import parse_config
from maskforge.tasks.synthetic_runs import open_synthetic_run

BUCKET = "store-test"


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """A moto S3 server on a free port with one bucket; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request lines would mix into the CLI's output
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = fsspec.filesystem(
        "s3", key="k", secret="s", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
    )
    fs.mkdir(BUCKET)
    yield endpoint
    moto.stop()


@pytest.fixture
def s3(server, monkeypatch):
    """The environment a user sets for an S3-compatible store: credentials, endpoint, region."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": server, "AWS_REGION": "us-east-1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    import s3fs

    # s3fs keeps one filesystem per set of options in a process, with the endpoint the environment had when it
    # first connected: another test module's server (since stopped) must not be reused here
    s3fs.S3FileSystem.clear_instance_cache()
    yield server
    s3fs.S3FileSystem.clear_instance_cache()


def other_writer(endpoint: str):
    """A filesystem of its own, as another process (a Dask worker) has: its writes bypass this process's cache."""
    return fsspec.filesystem(
        "s3", key="k", secret="s", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
    )


def test_a_run_in_the_bucket_is_verified_and_refused_without_its_marker(s3, monkeypatch):
    import s3fs

    written = []  # remote paths in the order they were written
    pipe, put = s3fs.S3FileSystem.pipe_file, s3fs.S3FileSystem.put_file
    monkeypatch.setattr(
        s3fs.S3FileSystem, "pipe_file", lambda fs, path, *a, **k: (written.append(path), pipe(fs, path, *a, **k))
    )
    monkeypatch.setattr(
        s3fs.S3FileSystem,
        "put_file",
        lambda fs, lpath, rpath, *a, **k: (written.append(rpath), put(fs, lpath, rpath, *a, **k)),
    )
    url = toy_run(f"s3://{BUCKET}/verified/run", [1, 6], per_class=3)
    assert written[-1].endswith(f"verified/run/{MARKER_NAME}") and len(written) > 3  # the marker last
    assert not [path for path in written if ".tmp-" in path or path.endswith(".part")]  # one PUT each: atomic on S3
    dataset = DatasetConfig.model_validate({"name": "toy", "fold": 0})
    reader = open_synthetic_run(url, "eval.synthetic_run", dataset, verify_shards=True)
    assert len(list(reader)) == 6 and reader.complete
    # a changed shard: sha256 verification refuses it, as for a local run
    fs, path = resolve(url)
    shard = f"{path}/shards/{reader.marker['shards'][0]['name']}"
    data = bytearray(fs.cat_file(shard))
    data[600] ^= 0xFF
    other_writer(s3).pipe_file(shard, bytes(data))
    with pytest.raises(ShardCorruptError, match=r"is corrupted: sha256 .* recorded in _COMPLETE.json"):
        list(RunReader(url))
    with pytest.raises(ConfigError, match=rf"^eval.synthetic_run: run {url} has corrupted shards"):
        open_synthetic_run(url, "eval.synthetic_run", dataset, verify_shards=True)
    # no marker (a writer that did not finish): refused
    other_writer(s3).rm(f"{path}/{MARKER_NAME}")
    with pytest.raises(ConfigError, match=rf"^eval.synthetic_run: run {url} is incomplete .*no _COMPLETE.json marker"):
        open_synthetic_run(url, "eval.synthetic_run", dataset)


def test_benchmark_table_in_the_bucket_sees_other_writers(s3):
    table = f"s3://{BUCKET}/results"
    row = {
        "created_at": "2026-12-06T19:00:00+00:00", "model": "hsnet", "backbone": "tiny", "checkpoint": "c",
        "dataset": "toy", "fold": 0, "split": "val", "shots": 1, "protocol": "fss-episodes", "setting": "1R",
        "synthetic_source": "none", "synthetic_per_class": 0, "evaluated": 5, "runs": 1, "seed": 0,
        "metrics": {"miou": 0.25, "fb_iou": 0.5}, "class_iou": {"1": 0.25}, "config_hash": "h", "code_version": "v",
    }  # fmt: skip
    assert read_results(table).num_rows == 0
    append_results(table, [row])
    assert read_results(table).column("metrics").to_pylist() == [[("miou", 0.25), ("fb_iou", 0.5)]]
    # a file another process appended is listed at once (no stale listing cache in this process)
    buf = io.BytesIO()
    pq.write_table(read_results(table).cast(RESULTS_SCHEMA), buf)
    other_writer(s3).pipe_file(f"{BUCKET}/results/results-29991231T000000000000-abcdef12.parquet", buf.getvalue())
    assert read_results(table).num_rows == 2
    config = {"eval": {"episodes": 5}}
    store_config(table, digest(config), config)
    assert read_config(table, digest(config)[:8]) == (digest(config), config)


def test_storage_options_apply_to_their_location_only():
    from maskforge.storage.object_store import storage_options, use_storage_options

    use_storage_options("s3://a/runs/", {"key": "K", "client_kwargs": {"endpoint_url": "http://e:9000"}})
    try:
        assert storage_options("s3://a/runs/x-123/shards/s.tar")["client_kwargs"]["endpoint_url"] == "http://e:9000"
        assert (
            storage_options("s3://a/runs")["key"] == "K"
            and storage_options("s3://a/runs")["use_listings_cache"] is False
        )
        for elsewhere in ("s3://a/runs2/x", "s3://a/other", "s3://b/runs/x"):
            assert "key" not in storage_options(elsewhere), elsewhere  # other locations: the environment's
    finally:
        use_storage_options("s3://a/runs", None)  # a config without options: the environment again
    assert "key" not in storage_options("s3://a/runs/x")


def test_storage_options_stay_out_of_the_stored_config():
    config = parse_config({"run": {"out_dir": "s3://b/r", "storage_options": {"key": "k", "secret": "TOPSECRET"}}})
    assert config.run.storage_options == {"key": "k", "secret": "TOPSECRET"}
    assert "storage_options" not in config.resolved()["run"] and "TOPSECRET" not in repr(config)
    assert config.hash() == parse_config({"run": {"out_dir": "s3://b/r"}}).hash()


def one_line_error(url: str) -> str:
    """The message check_output_location gives for url (it must raise), checked to be one line."""
    with pytest.raises(OutputLocationError) as info:
        check_output_location(url)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"run.out_dir: {url}: ")
    return message


def test_output_location_in_the_bucket(s3, monkeypatch, tmp_path):
    check_output_location(f"s3://{BUCKET}/runs")  # writable: passes, and leaves no probe behind
    assert not other_writer(s3).find(f"{BUCKET}/runs")
    message = one_line_error("s3://no-such-bucket/runs")
    assert "bucket 'no-such-bucket' does not exist at http://127.0.0.1:" in message and "(AWS_ENDPOINT_URL)" in message
    import moto.settings

    with pytest.MonkeyPatch.context() as auth:
        auth.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks access keys
        message = one_line_error(f"s3://{BUCKET}/runs")
    assert "access denied" in message and "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in message
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    start = time.perf_counter()
    message = one_line_error(f"s3://{BUCKET}/runs")
    assert f"endpoint {dead} (AWS_ENDPOINT_URL) does not answer" in message and time.perf_counter() - start < 15
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert "s3fs found no credentials; set AWS_ACCESS_KEY_ID" in one_line_error(f"s3://{BUCKET}/runs")


def test_output_location_without_s3fs(monkeypatch):
    from fsspec.registry import _registry

    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` fails as if it were not installed
    monkeypatch.delitem(_registry, "s3", raising=False)
    with pytest.raises(OutputLocationError) as info:
        check_output_location("s3://b/runs")
    message = str(info.value)
    assert message.startswith("run.out_dir: 's3://b/runs' needs an fsspec backend that is not installed")
    assert "pip install 'maskforge[s3]'" in message


def test_generate_refuses_a_missing_bucket_before_any_work(s3, tmp_path):
    from maskforge.flows.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"toy": {"image_size": 48, "n_train": 20, "n_val": 4}}}))
    result = CliRunner().invoke(app, ["generate", str(config), "--out", "s3://no-such-bucket/runs"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: run.out_dir: s3://no-such-bucket/runs: bucket 'no-such-bucket' does not exist")
