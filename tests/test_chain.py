"""The nightly chain on a real local Prefect server (issue 33, point 3): a generation deployment run for two rounds
and, with no further call, the learner deployment its completion event triggers, on each round's run.

The server, the process work pool, the worker and `prefect deploy` are Prefect's own, started as `maskforge serve`
starts them (flows/serve.py). The deployments come from a prefect.yaml written here: the generation and the chain's
HSNet evaluation, with the *real* file's trigger (prefect.yaml's `chain-hsnet-eval-toy-f0`) and tiny configs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tiny import diffusion_section

from maskforge.flows.serve import (
    GPU_LIMIT,
    POOL,
    prefect_executable,
    serve_env,
    stop_process_tree,
    wait_healthy,
)
from maskforge.storage.catalogue import read_catalogue
from maskforge.storage.results import read_results, rows_as_dicts

ROOT = Path(__file__).resolve().parents[1]
TOY = {"seed": 0, "image_size": 64, "n_train": 40, "n_val": 100}
#: Seconds a round may take: the worker starts a flow-run process per run (imports torch and Prefect, 5-15 s each).
ROUND_S = 240


def _free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configs(tmp: Path, tiny_models: dict) -> tuple[Path, Path]:
    """A generation config (every novel class of toy fold 0: 1 copy-paste scene and 1 text-prompt sample of the tiny
    diffusion models each) and an HSNet config matching the shipped toy HSNet, evaluated on 4 episodes with 1
    generated support per class."""
    generation = tmp / "gen.yaml"
    diffusion = diffusion_section(tiny_models, text={"samples": 1}, controlnet={"conditions": []})
    generation.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "night", "out_dir": str(tmp / "runs")},
                "dataset": {"name": "toy", "fold": 0, "toy": TOY},
                "shots": {"k": 1},
                "base": {"subset_size": 4},
                "generation": {"samples_per_class": 1},
                "diffusion": diffusion,
            }
        )
    )
    hsnet = yaml.safe_load((ROOT / "configs" / "hsnet-toy-refine.yaml").read_text())
    hsnet["run"] = {**hsnet["run"], "out_dir": str(tmp / "learners"), "threads": 1}
    hsnet["dataset"] = {"name": "toy", "fold": 0, "toy": TOY}
    hsnet["eval"] = {
        **hsnet["eval"],
        "episodes": 4,
        "synthetic_per_class": 1,
        "batch_size": 4,
        "results_dir": str(tmp / "results"),
    }
    path = tmp / "hsnet.yaml"
    path.write_text(yaml.safe_dump(hsnet))
    return generation, path


def _project_file(tmp: Path, generation: Path, hsnet: Path) -> Path:
    """A prefect.yaml of two deployments: the generation, and the real file's chain HSNet evaluation with its
    trigger unchanged and its parameters pointed at the tiny configs."""
    real = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    chain = next(d for d in real["deployments"] if d["name"] == "chain-hsnet-eval-toy-f0")
    gen = next(d for d in real["deployments"] if d["name"] == "toy-f0")
    pool = {"name": POOL}
    deployments = [
        {
            "name": "night-gen",
            "entrypoint": gen["entrypoint"],
            "work_pool": pool,
            "parameters": {"config_path": str(generation), "dataset": "toy", "fold": 0, "shots": 1},
        },
        {
            "name": "night-hsnet",
            "entrypoint": chain["entrypoint"],
            "work_pool": pool,
            "parameters": {**chain["parameters"], "config_path": str(hsnet), "synthetic_per_class": 1},
            "triggers": chain["triggers"],
        },
    ]
    path = tmp / "prefect.yaml"
    path.write_text(yaml.safe_dump({"name": "chain-test", "pull": real["pull"], "deployments": deployments}))
    return path


def _run(args: list[str], env: dict, timeout: float = 120) -> str:
    """Run a prefect CLI command from the project root; its output, or a failure with it."""
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0 or "already exists" in done.stdout + done.stderr, done.stdout + done.stderr
    return done.stdout


def _wait_rows(results: Path, n: int, worker_log: Path) -> list[dict]:
    """Wait until the benchmark table holds `n` rows of the synthetic setting; return them."""
    deadline = time.monotonic() + ROUND_S
    while time.monotonic() < deadline:
        rows = [r for r in rows_as_dicts(read_results(str(results))) if r["synthetic_source"] != "none"]
        if len(rows) >= n:
            return rows
        time.sleep(2)
    pytest.fail(f"no {n} synthetic rows within {ROUND_S} s; worker log:\n{worker_log.read_text()[-4000:]}")


@pytest.mark.chain
def test_two_nightly_rounds_trigger_two_evaluations_on_their_own_runs(tmp_path, tiny_models):
    generation, hsnet = _configs(tmp_path, tiny_models)
    project_file = _project_file(tmp_path, generation, hsnet)
    port = _free_port()
    env = serve_env(ROOT, port) | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll the pool every second, not every 10 s
        "MASKFORGE_HOME": str(ROOT),
    }
    prefect = prefect_executable()
    started = []
    worker_log = tmp_path / "worker.log"
    try:
        server = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(server)
        wait_healthy(env["PREFECT_API_URL"], 180, server)
        _run([prefect, "work-pool", "create", POOL, "--type", "process"], env)
        _run([prefect, "global-concurrency-limit", "create", GPU_LIMIT, "--limit", "1"], env)
        _run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(project_file)], env)
        automations = _run([prefect, "automation", "ls"], env)
        assert "night-hsnet" in automations or "maskforge.run" in automations or automations.strip()
        with worker_log.open("w") as log:
            worker = subprocess.Popen(
                [prefect, "worker", "start", "--pool", POOL],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(worker)
        for night, round_ in enumerate((20261206, 20261207), start=1):
            _run([prefect, "deployment", "run", "generate-fold/night-gen", "--param", f"round={round_}"], env)
            rows = _wait_rows(tmp_path / "results", night, worker_log)  # the trigger ran the evaluation
        catalogue = read_catalogue(str(tmp_path / "runs"))
        assert [r["round"] for r in catalogue] == [20261206, 20261207]
        assert sorted(r["synthetic_source"] for r in rows) == sorted(r["url"] for r in catalogue)  # each its own
        deadline = time.monotonic() + 30  # both generations and both evaluations recorded as completed
        while time.monotonic() < deadline and len(_flow_runs(prefect, env, "COMPLETED")) < 4:
            time.sleep(1)
        assert len(_flow_runs(prefect, env, "COMPLETED")) == 4
        # a rerun of a round emits nothing, so it triggers nothing: tests/test_rounds.py (cheaper than a third run)
    finally:
        for proc in reversed(started):
            stop_process_tree(proc, timeout=10)


def _flow_runs(prefect: str, env: dict, state: str) -> list[dict]:
    """The server's deployment flow runs in `state` (prefect flow-run ls, as JSON; subflows left out: each
    deployment's entry point runs its flow as a subflow)."""
    out = _run([prefect, "flow-run", "ls", "--limit", "50", "--state-type", state, "--output", "json"], env)
    return [run for run in json.loads(out or "[]") if run.get("deployment_id")]
