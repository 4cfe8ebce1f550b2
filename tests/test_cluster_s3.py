"""Generation on several machines, with real components: a moto S3 server, a `dask scheduler` and two `dask worker`
processes (each its own working directory and HOME, no shared folder): the cluster's run in the bucket equals the
local run byte for byte, an HSNet evaluation reads it from the bucket with the same result, credentials given in the
config reach no stored file or log, and a worker killed mid-run costs nothing but time."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny import diffusion_section
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.flows.generate import generate
from maskforge.storage.reader import RunReader
from maskforge.storage.results import read_results, rows_as_dicts
from maskforge.storage.shards import CONFIG_NAME, MARKER_NAME
from maskforge.tasks.config import parse_config

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
BUCKET = "maskforge-test"
#: Given only in the config's run.storage_options (moto checks no signature): it must show up nowhere.
SECRET = "s3cr3t-never-stored-7f1c"


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], home: Path, env: dict) -> subprocess.Popen:
    """Start a command in its own folder (its cwd, HOME and TMPDIR), in its own session (killed as a whole)."""
    (home / "tmp").mkdir(parents=True)
    log = open(home / "out.log", "wb")
    return subprocess.Popen(
        args,
        cwd=home,
        env={**env, "HOME": str(home), "TMPDIR": str(home / "tmp")},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A moto S3 server with an empty bucket, a Dask scheduler and two workers offering GPU=1 each (CPU-only
    here). The workers get no AWS variable: the endpoint and credentials reach them only in the config."""
    from moto.server import ThreadedMotoServer

    root = tmp_path_factory.mktemp("cluster")
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request lines would mix into the CLI's output
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    ).create_bucket(Bucket=BUCKET)
    from prefect.settings import PREFECT_API_URL

    env = {
        "PATH": os.environ["PATH"],
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the workers report their task runs to the flow's API
    }
    scheduler_file = root / "scheduler.json"
    procs = {
        "scheduler": start(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file)],
            root / "scheduler", env,
        )
    }  # fmt: skip
    for name in ("w1", "w2"):
        procs[name] = start(
            [str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file), "--name", name, "--nthreads", "1",
             "--nworkers", "1", "--resources", "GPU=1", "--no-dashboard"],
            root / name, env,
        )  # fmt: skip
    from distributed import Client

    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    client = Client(scheduler_file=str(scheduler_file), set_as_default=False, timeout=30)
    client.wait_for_workers(2, timeout=60)
    try:
        yield {
            "root": root,
            "endpoint": endpoint,
            "address": client.scheduler.address,
            "client": client,
            "procs": procs,
        }
    finally:
        client.close()
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        moto.stop()


def gen_config(out_dir: str, tiny: dict, endpoint: str | None = None) -> dict:
    """Toy fold 0's four novel classes: one composed scene and two 64 px text-prompt images each (2 steps)."""
    run = {"name": "multi", "seed": 3, "out_dir": out_dir, "retry_delay_s": 0}
    if endpoint:
        run["storage_options"] = {"key": "k", "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    return {
        "run": run,
        "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
        "base": {"subset_size": 10},
        "generation": {"samples_per_class": 1},
        "shards": {"max_count": 2},
        "diffusion": diffusion_section(tiny, text={"samples": 2}, controlnet={"conditions": []}),
    }


def bucket_files(endpoint: str, prefix: str) -> dict[str, bytes]:
    """{path under prefix: bytes} of every object under s3://BUCKET/prefix (a client of its own: no env needed)."""
    import fsspec

    fs = fsspec.filesystem(
        "s3", key="k", secret="s", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
    )
    base = f"{BUCKET}/{prefix.strip('/')}"
    return {path[len(base) + 1 :]: fs.cat_file(path) for path in fs.find(base)}


def same_run(local: dict[str, bytes], remote: dict[str, bytes]) -> None:
    """Assert every file is byte-identical: shards, manifest, summary, config.yaml (stored without run.out_dir,
    tasks/config.py:MaskforgeConfig.stored) and the marker."""
    assert sorted(local) == sorted(remote) and any(name.startswith("shards/") for name in local)
    assert MARKER_NAME in local and CONFIG_NAME in local
    for name in local:
        assert local[name] == remote[name], name


@pytest.fixture(scope="module")
def runs(cluster, tiny_models, tmp_path_factory):
    """The same config generated locally (one process, one torch thread, as a Dask worker runs) and on the
    cluster into the bucket through `maskforge generate --dask-address`; returns the folders and the CLI's output."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Dask's nanny starts workers with OMP_NUM_THREADS=1; thread count changes rounding
    try:
        local = generate(config=parse_config(gen_config(str(root / "local"), tiny_models)).resolved())["url"]
    finally:
        torch.set_num_threads(threads)
    path = root / "s3.yaml"
    path.write_text(yaml.safe_dump(gen_config(f"s3://{BUCKET}/runs", tiny_models, cluster["endpoint"])))
    result = CliRunner().invoke(app, ["generate", str(path), "--dask-address", cluster["address"]])
    assert result.exit_code == 0, result.output
    remote = result.output.split("run folder:", 1)[1].split()[0]
    return {"local": local, "remote": remote, "output": result.output, "config": path}


def test_cluster_run_in_the_bucket_equals_the_local_run(cluster, runs):
    local = {str(p.relative_to(runs["local"])): p.read_bytes() for p in Path(runs["local"]).rglob("*") if p.is_file()}
    remote = bucket_files(cluster["endpoint"], runs["remote"].split(f"{BUCKET}/", 1)[1])
    same_run(local, remote)
    # both workers did part of the work, each in its own folder: nothing was written in their working directories
    for name in ("w1", "w2"):
        home = cluster["root"] / name
        assert b"Finished in state Completed" in (home / "out.log").read_bytes(), name
        assert not (home / "runs").exists() and not list((home / "tmp").glob("maskforge-staging-*"))
    # the secret given in run.storage_options is in no stored object, no log and not in Prefect's flow parameters
    everything = bucket_files(cluster["endpoint"], "")
    assert not [name for name, data in everything.items() if SECRET.encode() in data]
    assert SECRET not in runs["output"]
    logs = [*Path(os.environ["PREFECT_HOME"]).rglob("*.log"), *cluster["root"].rglob("out.log")]
    assert logs and not [log for log in logs if SECRET.encode() in log.read_bytes()]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
    stored = [json.dumps(r.parameters, default=str) for r in flow_runs]
    assert any(f"s3://{BUCKET}/runs" in text for text in stored)  # the cluster run's parameters are among them
    assert not [text for text in stored if SECRET in text]


def test_hsnet_reads_the_bucket_run_like_the_local_one(cluster, runs, tmp_path, monkeypatch, request):
    # learners open the store from the environment's variables (their configs have no storage_options)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": cluster["endpoint"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # filesystems made before these variables keep their old endpoint
    request.addfinalizer(s3fs.S3FileSystem.clear_instance_cache)
    config = yaml.safe_load((ROOT / "configs" / "hsnet-toy.yaml").read_text())
    config["eval"]["episodes"] = 12
    rows = {}
    for where, run in (("local", runs["local"]), ("s3", runs["remote"])):
        config["eval"]["results_dir"] = str(tmp_path / "results") if where == "local" else f"s3://{BUCKET}/results"
        path = tmp_path / f"hsnet-{where}.yaml"
        path.write_text(yaml.safe_dump(config))
        checkpoint = str(ROOT / "models" / "checkpoints" / "hsnet-toy-f0.safetensors")
        options = ["--checkpoint", checkpoint, "--synthetic", run, "--per-class", "2", "--out", str(tmp_path)]
        result = CliRunner().invoke(app, ["hsnet", "eval", str(path), *options])
        assert result.exit_code == 0, result.output
        rows[where] = {r["setting"]: r for r in rows_as_dicts(read_results(config["eval"]["results_dir"]))}
    assert set(rows["s3"]) == {"1R", "1R+2S"} and rows["s3"]["1R+2S"]["synthetic_source"] == runs["remote"]
    for setting in ("1R", "1R+2S"):
        local, remote = rows["local"][setting], rows["s3"][setting]
        for column in ("created_at", "synthetic_source", "config_hash"):  # when, and the run's URL (hashed)
            local.pop(column), remote.pop(column)
        assert local == remote and remote["metrics"]["miou"] > 0


def test_a_worker_killed_mid_run_costs_only_time(cluster, runs, tiny_models):
    client, procs = cluster["client"], cluster["procs"]
    config = parse_config(gen_config(f"s3://{BUCKET}/killed", tiny_models, cluster["endpoint"]))
    from maskforge.flows.runners import dask_runner

    killed, restrictions = [], {}

    def resource_restrictions(dask_scheduler) -> dict:
        """{task key: the resources it asked for} of the tasks the scheduler holds (runs on the scheduler: a
        nested function, which cloudpickle sends by value; the scheduler cannot import this test module)."""
        return {str(key): task.resource_restrictions or None for key, task in dask_scheduler.tasks.items()}

    def kill_a_busy_worker():
        """Kill (SIGKILL, whole process group) a worker running a task, once another task has finished."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            finished = sum(len(keys) for keys in client.has_what().values())
            busy = [addr for addr, keys in client.processing().items() if keys]
            if finished and busy:
                restrictions.update(client.run_on_scheduler(resource_restrictions))
                name = client.scheduler_info()["workers"][busy[0]]["name"]
                os.killpg(procs[name].pid, signal.SIGKILL)
                killed.append(name)
            time.sleep(0.05)

    def killer_main():
        try:
            kill_a_busy_worker()
        except Exception as err:  # surfaced by the assert below, not lost in the thread
            killed.append(err)

    killer = threading.Thread(target=killer_main, daemon=True)
    killer.start()
    result = generate.with_options(task_runner=dask_runner(address=cluster["address"]))(config=config)
    killer.join(timeout=5)
    assert killed and isinstance(killed[0], str), f"no worker was killed mid-task: {killed}"
    # the diffusion stage asked for a GPU slot, composition for none
    by_task: dict[str, set] = {}
    for key, value in restrictions.items():
        for name in ("write_generated_part_task", "write_class_part_task"):
            if key.startswith(name):
                by_task.setdefault(name, set()).add(json.dumps(value))
    assert by_task == {"write_generated_part_task": {'{"GPU": 1}'}, "write_class_part_task": {"null"}}, restrictions
    assert procs[killed[0]].wait(timeout=10) == -signal.SIGKILL
    assert RunReader(result["url"], verify=True).complete
    remote = bucket_files(cluster["endpoint"], runs["remote"].split(f"{BUCKET}/", 1)[1])
    again = bucket_files(cluster["endpoint"], result["url"].split(f"{BUCKET}/", 1)[1])
    same_run(remote, again)


def test_a_cluster_without_gpu_workers_is_refused_before_any_work():
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from maskforge.flows.runners import check_dask_workers

    # an in-process cluster whose one worker offers no GPU resource: GPU tasks would wait on it forever
    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "processes": False, "threads_per_worker": 1, "dashboard_address": ":0"}
    )

    @flow(task_runner=runner)
    def needs(gpu: bool) -> None:
        check_dask_workers(needs_gpu=gpu)

    needs(gpu=False)  # CPU-only stages run on it
    with pytest.raises(ValueError, match=r"none of its 1 worker\(s\) offers a GPU resource.*--resources GPU=1"):
        needs.with_options(task_runner=runner.duplicate())(gpu=True)
