"""DiffewS and MaskDiff commands end cleanly on SIGTERM and Ctrl-C (exit 143 / 130, nothing left running) and keep
what they trained: the resumable state of the loop under way (models/train_state.py), and MaskDiff's finished
detector, so a rerun continues (tests/test_resume.py shows the rerun ends with the uninterrupted weights).

A file of its own beside tests/test_signals.py, so the suite's two workers can run the two files side by side.
"""

import signal
from pathlib import Path

import torch
import yaml
from test_diffews_stages import config as diffews_config
from test_maskdiff_train import config as maskdiff_config
from test_signals import EXIT_WITHIN_S, _signal_mid_training

from maskforge.models.train_state import RESUME_DIR


def _saved_step(stage_dir: Path, loop: str) -> int:
    """The step of a stage's saved resumable state of `loop`."""
    return torch.load(stage_dir / RESUME_DIR / f"{loop}.pt", weights_only=True)["step"]


def test_sigterm_ends_diffews_training_with_143_and_keeps_its_progress(tmp_path):
    from maskforge.tasks.diffews.config import parse_diffews_config

    data = diffews_config(tmp_path)
    data["run"] = {**data["run"], "save_every_s": 0.2}
    data["train"] = {**data["train"], "steps": 100_000, "log_every": 1}
    config = tmp_path / "diffews.yaml"
    config.write_text(yaml.safe_dump(data))
    code, seconds, alive, output = _signal_mid_training(
        tmp_path, ["diffews", "train", str(config)], signal.SIGTERM, "step 2/", linger=3
    )
    assert code == 143, output[-3000:]
    assert "terminated (SIGTERM): exit 143" in output
    assert seconds < EXIT_WITHIN_S and not alive, (seconds, alive)
    stage = Path(parse_diffews_config(data).train_dir())
    assert _saved_step(stage, "diffews") >= 1  # the rerun continues from here


def test_ctrl_c_ends_maskdiff_training_with_130_and_keeps_the_trained_detector(tmp_path):
    from maskforge.tasks.maskdiff.config import parse_maskdiff_config

    data = maskdiff_config(tmp_path)
    data["run"] = {**data["run"], "save_every_s": 0.2}
    data["base"] = {**data["base"], "head_steps": 200}  # a line every 10 steps
    config = tmp_path / "maskdiff.yaml"
    config.write_text(yaml.safe_dump(data))
    code, seconds, alive, output = _signal_mid_training(
        tmp_path, ["maskdiff", "train", str(config)], signal.SIGINT, "base mask head step 30/", linger=3
    )
    assert code == 130, output[-3000:]
    assert "interrupted (SIGINT): exit 130" in output
    assert seconds < EXIT_WITHIN_S and not alive, (seconds, alive)
    stage = Path(parse_maskdiff_config(data).base_dir())
    assert _saved_step(stage, "detector") == 3  # finished: a rerun does not train it again
    assert _saved_step(stage, "head") >= 10
