"""A generation run killed with SIGKILL at several points reruns to exactly the uninterrupted run's output."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import diffusion_section

from maskforge.storage.reader import RunReader
from maskforge.tasks.config import parse_config

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]
ROOT = Path(__file__).resolve().parents[1]


def _config(out: Path, tiny: dict) -> dict:
    return parse_config(
        {
            "run": {"name": "kill", "seed": 2, "out_dir": str(out)},
            "dataset": {"toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "shots": {"k": 2},
            "base": {"subset_size": 10},
            "generation": {"samples_per_class": 3, "classes": ["red disc", "green square"]},
            "shards": {"max_count": 1},
            "diffusion": diffusion_section(tiny, text={"samples": 2}, controlnet={"conditions": ["mask"]}),
        }
    ).resolved()


def _files(run: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    files.pop("config.yaml"), files.pop("_COMPLETE.json")  # they record out_dir, which differs per copy
    return files


def _run_until(config: dict, condition=lambda: False, timeout: float = 300.0) -> int:
    """Run the flow in a child process on the test's Prefect API; SIGKILL it once condition() holds.

    Every run of the test is a fresh child process, as when a user reruns a killed CLI: convolution results can
    depend on the torch thread count, which a long-lived test process does not keep constant across its threads.
    """
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    code = "import json, sys; from flows.generate import generate; generate(config=json.loads(sys.argv[1]))"
    child = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(config)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        if condition():
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    return child.wait(timeout=60)


def _run_dir(out: Path) -> Path:
    runs = list(out.glob("kill-*"))
    return runs[0] if runs else out / "missing"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models, prefect_harness):
    """The uninterrupted run, in a child process."""
    out = tmp_path_factory.mktemp("reference")
    assert _run_until(_config(out, tiny_models)) == 0
    return _run_dir(out)


@pytest.mark.parametrize("point", ["first-part-complete", "diffusion-part-started", "diffusion-part-complete"])
def test_killed_run_reruns_to_the_same_output(point, reference, tmp_path, tiny_models):
    out = tmp_path / "killed"
    config = _config(out, tiny_models)
    parts = lambda: _run_dir(out) / "parts"  # noqa: E731
    conditions = {
        "first-part-complete": lambda: (parts() / "c0001" / "_COMPLETE.json").exists(),
        "diffusion-part-started": lambda: (parts() / "c0001-gen").exists(),
        "diffusion-part-complete": lambda: (parts() / "c0001-gen" / "_COMPLETE.json").exists(),
    }
    assert _run_until(config, conditions[point]) == -signal.SIGKILL  # it was killed, not finished
    assert not (_run_dir(out) / "_COMPLETE.json").exists()
    assert _run_until(config) == 0  # the rerun, a fresh process like the killed one
    rerun = _run_dir(out)
    keys = RunReader(str(rerun)).manifest.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 2 * (3 + 2 + 2)  # per class: 3 composed, 2 text, 2 ControlNet (2 shots)
    assert _files(rerun) == _files(reference)
    assert not list(rerun.rglob("*.part")) and not (rerun / "parts").exists()
