"""Learners' pre-flight (issue 32, point 3) and progress lines (point 8), for HSNet, GFSS, DiffewS and MaskDiff.

A bad input exits the CLI with one `error:` line before Prefect starts (no flow run, Prefect not even imported); the
flows run the same checks as their first task (deployments skip the CLI); long stages log `S/T ... ETA mm:ss`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_diffews_stages import TOY_SD
from test_diffews_stages import config as diffews_config
from test_gfss_stages import config as gfss_config
from test_maskdiff_train import config as maskdiff_config
from tiny import toy_run
from typer.testing import CliRunner

from maskforge.eval.folds import toy_fold
from maskforge.flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
FOLD = toy_fold(0)
#: A progress line's tail: `(12.3 s, ETA 01:05)` (or h:mm:ss past an hour).
ETA = re.compile(r"\(([\d.]+) s, ETA (?:(\d+):)?(\d\d):(\d\d)\)$")


def write(path: Path, data: dict) -> str:
    """Write a YAML config; return its path."""
    path.write_text(yaml.safe_dump(data))
    return str(path)


def hsnet(tmp: Path) -> dict:
    """A tiny HSNet config under tmp: 64 px toy world of fold 0, 4 steps of 2 episodes, 4 evaluation episodes."""
    return {
        "run": {"name": "toy", "out_dir": str(tmp / "runs"), "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 64, "n_train": 40, "n_val": 60}},
        "model": {"backbone": "tiny", "img_size": 64, "tiny_maxpool": True, "tiny_calibration_images": 8},
        "train": {"steps": 4, "batch_size": 2, "log_every": 2},
        "eval": {"episodes": 4, "results_dir": str(tmp / "results")},
    }


def maskdiff(tmp: Path, **sections) -> dict:
    """The tiny MaskDiff config of test_maskdiff_train, with a small evaluation."""
    data = maskdiff_config(tmp, **sections)
    data["head"] = {**data["head"], "sampler": "ddim", "ddim_steps": 2}  # seconds, not DDPM's 1000 steps
    data["eval"] = {"sampling_seeds": 1, "max_images": 4, "score_threshold": 0.0, "batch_images": 2, **data["eval"]}
    return data


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, text the error line must hold) of one bad input of each kind, per learner."""
    tmp.mkdir(parents=True, exist_ok=True)
    other_fold = toy_run(str(tmp / "fold3"), FOLD.novel, fold=3, toy=hsnet(tmp)["dataset"]["toy"])
    pascal = toy_run(str(tmp / "pascal"), FOLD.base, dataset="pascal")
    a_file = tmp / "a-file"
    a_file.write_text("")
    h = hsnet(tmp)
    d = diffews_config(tmp)
    m = maskdiff(tmp)
    g = gfss_config(tmp)
    r50 = {"backbone": "resnet50", "img_size": 64, "weights": str(tmp / "no.pth")}
    r101 = {"backbone": "resnet101", "weights": str(tmp / "no.pth")}
    return [
        (["hsnet", "train", write(tmp / "h1.yaml", h), "--synthetic", str(tmp / "typo")], "train.synthetic_run: "),
        (["hsnet", "eval", write(tmp / "h2.yaml", h), "--synthetic", other_fold], "eval.synthetic_run: "),
        (["hsnet", "eval", write(tmp / "h3.yaml", h)], "eval.checkpoint: "),
        (["hsnet", "train", write(tmp / "h4.yaml", {**h, "train": {**h["train"], "split": "nope"}})], "train.split: "),
        (["hsnet", "eval", write(tmp / "h5.yaml", {**h, "eval": {**h["eval"], "results_dir": str(a_file)}})],
         "eval.results_dir: "),
        (["hsnet", "train", write(tmp / "h6.yaml", {**h, "model": r50})],
         "model.weights: "),
        (["diffews", "train", write(tmp / "d1.yaml", {**d, "model": {**d["model"], "img_size": 36}})],
         "model.img_size: 36 is not a multiple of"),
        (["diffews", "eval", write(tmp / "d2.yaml", d)], "eval.checkpoint: "),
        (["diffews", "train", write(tmp / "d3.yaml", d), "--synthetic", pascal], "train.synthetic_runs: "),
        (["diffews", "eval", write(tmp / "d4.yaml", {**d, "eval": {**d["eval"], "split": "nope"}}), "--checkpoint",
          str(Path(TOY_SD) / "unet")], "eval.split: "),
        (["maskdiff", "eval", write(tmp / "m1.yaml", m)], "train first"),
        (["maskdiff", "train", write(tmp / "m2.yaml", m), "--synthetic", str(tmp / "typo")],
         "finetune.synthetic_runs: "),
        (["maskdiff", "train", write(tmp / "m3.yaml", {**m, "base": {**m["base"], "split": "nope"}})], "base.split: "),
        (["gfss", "train-base", write(tmp / "g1.yaml", {**g, "model": r101})], "model.weights: "),
        (["gfss", "train-base", write(tmp / "g2.yaml", {**g, "base": {**g["base"], "split": "nope"}})],
         "base.split: "),
        (["gfss", "train-novel", write(tmp / "g3.yaml", g)], "train it first"),
        (["gfss", "train-novel", write(tmp / "g4.yaml", g), "--synthetic", str(tmp / "typo")],
         "novel.synthetic_runs: "),
        (["gfss", "train-novel", write(tmp / "g5.yaml", {**g, "novel": {**g["novel"], "shots": 50}})],
         "novel.shots: 50 shots of class 1"),
        (["gfss", "eval", write(tmp / "g6.yaml", g)], "has not completed"),
        (["gfss", "train-base", write(tmp / "g7.yaml", {**g, "base": {**g["base"], "steps": 0, "batch_size": 1024}})],
         "base.batch_size: 1024 is more than the "),
    ]  # fmt: skip


def test_cli_preflight_fails_on_one_line_before_any_flow_runs(tmp_path, monkeypatch):
    import maskforge.flows.cli_run as cli_run

    flows_run = []
    monkeypatch.setattr(cli_run, "run_flow", lambda flow, *args, **kw: flows_run.append(flow.name))
    for argv, expected in bad_inputs(tmp_path):
        result = runner.invoke(app, argv)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and not flows_run, (argv, flows_run, result.output)
        assert len(errors) == 1 and expected in errors[0], (argv, result.output)
        assert "(traceback in " not in errors[0]  # the pre-flight's line, not a failed flow run's
        assert "Starting temporary server" not in result.output and "Created flow run" not in result.output


def test_cli_preflight_never_imports_prefect(tmp_path):
    """In a fresh process: every bad input above exits 1 on one line with Prefect never imported (hence never
    started), which takes seconds, not the ephemeral server's 10 s and more."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from pathlib import Path
from typer.testing import CliRunner
from test_learner_preflight import bad_inputs
from maskforge.flows.cli import app

runner = CliRunner()
for argv, expected in bad_inputs(Path({str(tmp_path)!r})):
    result = runner.invoke(app, argv)
    assert result.exit_code == 1 and expected in result.output, (argv, result.output)
print("prefect imported:", any(name.split(".")[0] == "prefect" for name in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "prefect imported: False", done.stdout


def _flow_cases(tmp: Path):
    """(learner, flow name, bad config, expected message) per flow: no stage of the learner may start."""
    h, d, m, g = hsnet(tmp), diffews_config(tmp), maskdiff(tmp), gfss_config(tmp)
    return [
        ("hsnet", "train_hsnet", {**h, "train": {**h["train"], "split": "nope"}}, "train.split: "),
        ("hsnet", "eval_hsnet", h, "eval.checkpoint: "),
        ("diffews", "train_diffews", {**d, "model": {**d["model"], "img_size": 36}}, "model.img_size: 36"),
        ("diffews", "eval_diffews", d, "eval.checkpoint: "),
        ("maskdiff", "train_maskdiff", {**m, "base": {**m["base"], "split": "nope"}}, "base.split: "),
        ("maskdiff", "eval_maskdiff", m, "train first"),
        ("gfss", "train_gfss_base", {**g, "base": {**g["base"], "split": "nope"}}, "base.split: "),
        ("gfss", "train_gfss_novel", g, "train it first"),
        ("gfss", "eval_gfss", g, "has not completed"),
        ("gfss", "gfss_novel_eval", g, "train it first"),
    ]  # fmt: skip


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_harness")
def test_flows_run_the_preflight_as_their_first_task(tmp_path, monkeypatch):
    """A deployment skips the CLI: the flow's first task is the same pre-flight, so a stage task never starts."""
    import importlib

    from maskforge.flows.learners import learner_flows
    from maskforge.tasks.registry import learner

    started = []
    for name, flow_name, data, expected in _flow_cases(tmp_path):
        spec = learner(name)
        for stage in spec.stages.values():  # every stage function of the learner, where its task looks it up
            module, _, function = stage.fn.partition(":")
            target = importlib.import_module(spec.package + module)
            monkeypatch.setattr(target, function, lambda *a, _s=function, **k: started.append(_s))
        with pytest.raises(Exception, match=re.escape(expected)):
            learner_flows(name)[flow_name](config=data)
        assert not started, (flow_name, started)


def _eta_lines(lines: list[str], prefix: str) -> list[tuple[int, int, float]]:
    """Return (done, total, ETA seconds) of the lines that start with `prefix` and end with an ETA."""
    out = []
    for line in lines:
        if line.startswith(prefix) and (tail := ETA.search(line)):
            done, total = map(int, re.match(re.escape(prefix) + r"(\d+)/(\d+)", line).groups())
            hours, minutes, seconds = int(tail.group(2) or 0), int(tail.group(3)), int(tail.group(4))
            out.append((done, total, 3600 * hours + 60 * minutes + seconds))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


def test_hsnet_steps_and_episodes_log_done_total_and_an_eta(tmp_path):
    from maskforge.tasks.hsnet.config import parse_hsnet_config
    from maskforge.tasks.hsnet.eval import eval_hsnet
    from maskforge.tasks.hsnet.train import train_hsnet

    lines: list[str] = []
    config = parse_hsnet_config(hsnet(tmp_path))
    train_hsnet(config, log=lines.append)
    eval_hsnet(config, log=lines.append)
    steps, episodes = _eta_lines(lines, "step "), _eta_lines(lines, "episode ")
    assert [(d, t) for d, t, _ in steps] == [(2, 4), (4, 4)], lines
    assert [(d, t) for d, t, _ in episodes] == [(n, 4) for n in (1, 2, 3, 4)], lines
    assert steps[-1][2] == 0 and episodes[-1][2] == 0  # nothing left at the end


def test_diffews_steps_and_episodes_log_done_total_and_an_eta(tmp_path):
    from maskforge.tasks.diffews.config import parse_diffews_config
    from maskforge.tasks.diffews.evaluate import eval_diffews
    from maskforge.tasks.diffews.train import train_diffews

    lines: list[str] = []
    config = parse_diffews_config(diffews_config(tmp_path))
    train_diffews(config, log=lines.append)
    eval_diffews(config, log=lines.append)
    assert [(d, t) for d, t, _ in _eta_lines(lines, "step ")] == [(1, 2), (2, 2)], lines
    assert [(d, t) for d, t, _ in _eta_lines(lines, "episode ")] == [(n, 4) for n in (1, 2, 3, 4)], lines


def test_maskdiff_steps_and_images_log_done_total_and_an_eta(tmp_path):
    from maskforge.tasks.maskdiff.config import parse_maskdiff_config
    from maskforge.tasks.maskdiff.evaluate import eval_maskdiff
    from maskforge.tasks.maskdiff.train import train_maskdiff_base, train_maskdiff_finetune

    lines: list[str] = []
    config = parse_maskdiff_config(maskdiff(tmp_path))
    train_maskdiff_base(config, log=lines.append)
    train_maskdiff_finetune(config, log=lines.append)
    eval_maskdiff(config, log=lines.append)
    for what, steps in (("base detector", 3), ("base mask head", 2), ("K-shot detector", 2), ("K-shot mask head", 2)):
        logged = _eta_lines(lines, f"{what} step ")
        assert logged and logged[-1] == (steps, steps, 0), (what, lines)
    batches = [line for line in lines if line.startswith("batch ")]
    assert [re.search(r"images (\d+)/(\d+)", b).groups() for b in batches] == [("2", "4"), ("4", "4")], lines
    assert all(ETA.search(b) for b in batches), batches


def test_gfss_steps_iterations_and_images_log_done_total_and_an_eta(tmp_path):
    from maskforge.tasks.gfss.base import train_gfss_base
    from maskforge.tasks.gfss.config import parse_gfss_config
    from maskforge.tasks.gfss.evaluate import eval_gfss
    from maskforge.tasks.gfss.novel import train_gfss_novel

    lines: list[str] = []
    data = gfss_config(tmp_path)
    config = parse_gfss_config({**data, "novel": {**data["novel"], "classes_per_step": 5}})  # 3 novel: one step
    train_gfss_base(config, log=lines.append)
    train_gfss_novel(config, log=lines.append)
    eval_gfss(config, log=lines.append)
    assert [(d, t) for d, t, _ in _eta_lines(lines, "step ")] == [(1, 3), (2, 3), (3, 3)], lines
    assert [(d, t) for d, t, _ in _eta_lines(lines, "iterations ")] == [(2, 2)], lines  # 1 run x 1 step x 2
    assert [(d, t) for d, t, _ in _eta_lines(lines, "images ")] == [(3, 3)], lines  # 1 checkpoint x 3 images
