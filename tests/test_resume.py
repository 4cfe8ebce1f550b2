"""Resumable training state (issue 32, point 1; models/train_state.py): a learner stage cut short continues from its
last saved state, and (except GFSS's base stage, whose DataLoader streams cannot rewind) ends with exactly the
weights of an uninterrupted run. Each case interrupts training through its log callback (what Ctrl-C does between
two steps), reruns, and compares tensors; tests/test_signals.py sends real signals to the commands.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_diffews_stages import config as diffews_config
from test_gfss_stages import config as gfss_config
from test_learner_preflight import hsnet as hsnet_config
from test_learner_preflight import maskdiff as maskdiff_config

from maskforge.eval.folds import toy_fold
from maskforge.models.train_state import RESUME_DIR, TrainState, TrainStateError


class Interrupted(Exception):
    """What the log callback raises to cut a stage short (a KeyboardInterrupt would stop pytest)."""


def interrupt_at(pattern: str, lines: list[str]):
    """A log callback that records lines and raises Interrupted at the first line matching `pattern`."""

    def log(line: str) -> None:
        lines.append(line)
        if re.search(pattern, line):
            raise Interrupted(line)

    return log


def every_step(data: dict, out: Path) -> dict:
    """The config with its outputs under `out` and a resumable state after every step."""
    run = {**data["run"], "out_dir": str(out), "save_every_s": 1e-9}
    return {**data, "run": run}


def same_tensors(a: str, b: str) -> None:
    """Assert two safetensors files hold equal tensors under equal names."""
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


def test_state_restores_modules_optimisers_and_generators_and_refuses_another_loop(tmp_path):
    import numpy as np

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    rng, gen = np.random.default_rng(1), torch.Generator().manual_seed(2)
    state = TrainState(str(tmp_path), "loop", 10, {"net": net, "opt": opt}, {"rng": rng, "gen": gen}, every_s=0)
    assert state.restore() == (0, {}) and not state.maybe_save(3, {})  # nothing saved yet; every_s 0 never saves
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5)
    state.save(4, {"losses": [1.5]})
    expected = (net.weight.clone(), rng.random(), torch.rand(1, generator=gen), torch.rand(1))
    with torch.no_grad():
        net.weight.zero_()
    rng.random(), torch.rand(1, generator=gen), torch.rand(1)  # move every generator on
    assert state.restore() == (4, {"losses": [1.5]})
    assert torch.equal(net.weight, expected[0]) and rng.random() == expected[1]
    assert torch.equal(torch.rand(1, generator=gen), expected[2]) and torch.equal(torch.rand(1), expected[3])
    assert opt.state_dict()["state"][0]["step"] == 1  # Adam's moments came back too
    other = TrainState(str(tmp_path), "loop", 20, {"net": net, "opt": opt}, {"rng": rng, "gen": gen})
    with pytest.raises(TrainStateError, match=r"loop\.pt: a resumable state of another training \(10 total steps"):
        other.restore()


def test_hsnet_resumes_where_it_stopped_and_ends_with_the_uninterrupted_weights(tmp_path):
    from maskforge.tasks.hsnet.config import parse_hsnet_config
    from maskforge.tasks.hsnet.train import train_hsnet

    data = hsnet_config(tmp_path)
    whole = train_hsnet(parse_hsnet_config(every_step(data, tmp_path / "whole")), log=lambda _: None)
    config = parse_hsnet_config(every_step(data, tmp_path / "cut"))
    with pytest.raises(Interrupted):
        train_hsnet(config, log=interrupt_at(r"^step 2/4", []))
    assert (Path(config.train_dir()) / RESUME_DIR / "hsnet.pt").is_file()
    lines: list[str] = []
    resumed = train_hsnet(config, log=lines.append)
    assert "resumed at step 1/4" in lines[0], lines
    assert resumed["losses"] == whole["losses"]
    same_tensors(resumed["checkpoint"], whole["checkpoint"])
    assert not (Path(config.train_dir()) / RESUME_DIR).exists()  # the finished stage keeps no resumable state


def test_diffews_resumes_with_the_uninterrupted_weights(tmp_path):
    from maskforge.tasks.diffews.config import parse_diffews_config
    from maskforge.tasks.diffews.train import train_diffews

    data = diffews_config(tmp_path)
    whole = train_diffews(parse_diffews_config(every_step(data, tmp_path / "whole")), log=lambda _: None)
    config = parse_diffews_config(every_step(data, tmp_path / "cut"))
    with pytest.raises(Interrupted):
        train_diffews(config, log=interrupt_at(r"^step 2/2", []))
    lines: list[str] = []
    resumed = train_diffews(config, log=lines.append)
    assert "resumed at step 1/2" in lines[0], lines
    assert resumed["losses"] == whole["losses"]
    weights = sorted(Path(whole["checkpoint"]).rglob("*.safetensors"))
    assert weights
    for file in weights:
        same_tensors(str(Path(resumed["checkpoint"]) / file.relative_to(whole["checkpoint"])), str(file))
    assert not (Path(config.train_dir()) / RESUME_DIR).exists()


def test_maskdiff_keeps_its_trained_detector_when_the_head_was_cut_short(tmp_path):
    from maskforge.tasks.maskdiff.config import parse_maskdiff_config
    from maskforge.tasks.maskdiff.train import DETECTOR_FILE, HEAD_FILE, train_maskdiff_base

    data = maskdiff_config(tmp_path)
    whole = train_maskdiff_base(parse_maskdiff_config(every_step(data, tmp_path / "whole")), log=lambda _: None)
    config = parse_maskdiff_config(every_step(data, tmp_path / "cut"))
    with pytest.raises(Interrupted):
        train_maskdiff_base(config, log=interrupt_at(r"^base mask head step 2/2", []))
    lines: list[str] = []
    resumed = train_maskdiff_base(config, log=lines.append)
    assert any(line.startswith("base detector: resumed at step 3/3 from") for line in lines), lines
    assert not any(line.startswith("base detector step") for line in lines), lines  # not retrained
    assert any(line.startswith("base mask head: resumed at step 1/2 from") for line in lines), lines
    assert resumed["head_losses"] == whole["head_losses"]
    for name in (DETECTOR_FILE, HEAD_FILE):
        same_tensors(str(Path(config.base_dir()) / name), str(Path(whole["stage_dir"]) / name))
    assert not (Path(config.base_dir()) / RESUME_DIR).exists()


def test_gfss_base_resumes_from_its_saved_step(tmp_path):
    from maskforge.models.gfss.checkpoint import load_gfss
    from maskforge.tasks.gfss.base import train_gfss_base
    from maskforge.tasks.gfss.config import parse_gfss_config

    config = parse_gfss_config(every_step(gfss_config(tmp_path), tmp_path / "cut"))
    with pytest.raises(Interrupted):
        train_gfss_base(config, log=interrupt_at(r"^step 3/3", []))
    state = Path(config.base_dir()) / RESUME_DIR / "base.pt"
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 2
    lines: list[str] = []
    report = train_gfss_base(config, log=lines.append)
    assert "resumed at step 2/3" in lines[0], lines
    assert [line.split(":")[0] for line in lines[1:]] == ["step 3/3"]  # one step left, not three
    assert len(report["losses"]) == 3  # the two saved windows and the last one
    net, _ = load_gfss(report["checkpoint"])
    assert net.spec.num_classes == 1 + len(toy_fold(0).base) and not state.parent.exists()


def test_gfss_novel_stage_keeps_the_run_seeds_an_interrupted_attempt_finished(tmp_path):
    from maskforge.tasks.gfss.base import train_gfss_base
    from maskforge.tasks.gfss.config import parse_gfss_config
    from maskforge.tasks.gfss.novel import train_gfss_novel

    base = train_gfss_base(parse_gfss_config(gfss_config(tmp_path)), log=lambda _: None)
    data = gfss_config(tmp_path, base={"checkpoint": base["checkpoint"]}, novel={"runs": 2})
    whole = train_gfss_novel(parse_gfss_config(every_step(data, tmp_path / "whole")), log=lambda _: None)
    config = parse_gfss_config(every_step(data, tmp_path / "cut"))
    with pytest.raises(Interrupted):
        train_gfss_novel(config, log=interrupt_at(r"^run 1 \(seed", []))
    lines: list[str] = []
    resumed = train_gfss_novel(config, log=lines.append)
    assert any(line.startswith("run 0 (seed") and "kept" in line for line in lines), lines
    assert not any(line.startswith("run 0 (seed") and "loss" in line for line in lines), lines  # not trained again
    assert [r["seed"] for r in resumed["runs"]] == [r["seed"] for r in whole["runs"]]
    for got, want in zip(resumed["runs"], whole["runs"]):
        assert [s["final_loss"] for s in got["steps"]] == [s["final_loss"] for s in want["steps"]]
        for a, b in zip(got["steps"], want["steps"]):
            same_tensors(a["checkpoint"], b["checkpoint"])
