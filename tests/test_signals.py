"""Learner commands end cleanly on Ctrl-C and SIGTERM: exit 130 / 143 within seconds, nothing left running.

Each command runs as a user's shell runs it: its own session and process group, the ephemeral Prefect API started by
the command (a subprocess in the same group), and the signal sent to the whole group, as a terminal's Ctrl-C is.
Before flows/cli_run.py:ends_cleanly_on_signals, the group signal killed the API first and the flow engine's crash
report retried against it for minutes (the command hung, its dead server unreaped); a GFSS DataLoader worker killed
by it made the command fail with exit 1.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from tiny import diffusion_section

ROOT = Path(__file__).resolve().parents[1]
#: Seconds a command may take from the signal to its exit (the API restart and crash report take 6-12 s on 2 cores).
EXIT_WITHIN_S = 45


def _signal_mid_training(
    tmp_path: Path,
    argv: list[str],
    sig: signal.Signals,
    marker: str = "step 4/",
    settle: float = 0.0,
    linger: float = 10.0,
) -> tuple[int, float, list, str]:
    """Start `maskforge ARGV` in its own session, wait for `marker` in its output (mid-stage), signal its group;
    return (exit code, seconds from signal to exit, processes of its tree still alive `linger` s later, output)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)  # the command's own ephemeral API, as for a user
    log = tmp_path / "out.log"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", "from maskforge.flows.cli import app; app()", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 240
    while marker not in log.read_text() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(settle)  # let the stage get under way
    assert child.poll() is None, log.read_text()[-3000:]
    tree = psutil.Process(child.pid).children(recursive=True)
    sent = time.monotonic()
    os.killpg(child.pid, sig)
    try:
        code = child.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        pytest.fail(f"{argv} did not exit within {EXIT_WITHIN_S} s of {sig.name}:\n{log.read_text()[-3000:]}")
    seconds = time.monotonic() - sent
    time.sleep(linger)  # a DataLoader worker out of the group stops within torch's 5 s watchdog interval
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    return code, seconds, alive, log.read_text()


def test_ctrl_c_ends_hsnet_training_with_130_and_nothing_left(tmp_path):
    config = tmp_path / "hsnet.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "sig", "out_dir": str(tmp_path / "runs"), "device": "cpu", "threads": 1},
                "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 64, "n_train": 40, "n_val": 8}},
                "model": {"backbone": "tiny", "img_size": 64, "tiny_layers": [1, 1, 1, 1], "tiny_width": 8},
                "train": {"steps": 100_000, "batch_size": 1, "log_every": 2},
            }
        )
    )
    code, seconds, alive, output = _signal_mid_training(
        tmp_path, ["hsnet", "train", str(config)], signal.SIGINT, linger=3
    )
    assert code == 130, output[-3000:]
    assert "interrupted (SIGINT): exit 130" in output and "Crashed" in output  # the run is recorded as crashed
    assert seconds < EXIT_WITHIN_S and not alive, (seconds, alive)


def test_sigterm_ends_gfss_training_with_data_workers_with_143_and_nothing_left(tmp_path):
    config = tmp_path / "gfss.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "sig", "out_dir": str(tmp_path / "runs"), "device": "cpu", "threads": 1},
                "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 48, "n_train": 40, "n_val": 8}},
                "model": {"backbone": "tiny", "tiny_width": 8, "aspp_channels": 16},
                "base": {"steps": 100_000, "batch_size": 2, "crop_size": 48, "log_every": 2, "workers": 1},
            }
        )
    )
    code, seconds, alive, output = _signal_mid_training(tmp_path, ["gfss", "train-base", str(config)], signal.SIGTERM)
    assert code == 143, output[-3000:]
    assert "terminated (SIGTERM): exit 143" in output and "killed by signal" not in output
    assert seconds < EXIT_WITHIN_S and not alive, (seconds, alive)


def test_sigterm_ends_generate_mid_task_with_143_without_waiting_for_the_task(tmp_path, tiny_models):
    """Generation tasks run in a worker thread; Prefect's runner waited for the running one (an embedding of 1 500
    steps here, minutes) before the command could end. Now the task is abandoned; its part is redone on rerun."""
    config = tmp_path / "gen.yaml"
    diffusion = diffusion_section(tiny_models, text={"samples": 0}, controlnet={"conditions": []})
    # the first progress line (the marker) comes after a tenth of the steps: 150 steps in, minutes of work left
    diffusion["embedding"] = {"samples": 1, "steps": 1_500}
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "sig", "out_dir": str(tmp_path / "runs")},
                "dataset": {"toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
                "shots": {"k": 1},
                "base": {"subset_size": 4},
                "generation": {"samples_per_class": 1, "classes": ["red disc"]},
                "diffusion": diffusion,
            }
        )
    )
    code, seconds, alive, output = _signal_mid_training(
        tmp_path, ["generate", str(config)], signal.SIGTERM, "steps, loss", linger=3
    )
    assert code == 143, output[-3000:]
    assert "terminated (SIGTERM): exit 143" in output
    assert seconds < EXIT_WITHIN_S and not alive, (seconds, alive)
