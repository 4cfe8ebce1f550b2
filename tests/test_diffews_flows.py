"""DiffewS under Prefect and from the CLI: train and eval flows, `maskforge diffews load|train|eval`, deployments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from test_diffews_stages import EPISODES, FOLD, STEPS, TOY_SD, config, synthetic_run
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.flows.deployments import eval_diffews_fold, train_diffews_fold
from maskforge.flows.learners import learner_flow
from maskforge.storage.results import read_results, rows_as_dicts
from maskforge.tasks.diffews.config import parse_diffews_config

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()
train_diffews, eval_diffews = learner_flow("train_diffews"), learner_flow("eval_diffews")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny DiffewS trained once through the Prefect flow: (folder, config dict, training report)."""
    tmp = tmp_path_factory.mktemp("diffews-flows")
    data = config(tmp)
    return tmp, data, train_diffews(config=data)


def test_flows_train_then_eval_append_one_row_per_setting(trained, tmp_path):
    tmp, data, report = trained
    assert report["steps"] == STEPS and Path(report["checkpoint"], "COMPLETE.json").is_file()
    assert report["checkpoint"] == parse_diffews_config(data).checkpoint_path()
    results = data["eval"]["results_dir"]
    result = eval_diffews(config=data)
    assert Path(result["table_file"]).is_file() and Path(result["table_file"]).parent == Path(results)
    assert set(result["settings"]) == {"1R"} and result["episodes"] == EPISODES
    (row,) = rows_as_dicts(read_results(results))
    assert (row["model"], row["setting"], row["protocol"], row["dataset"], row["fold"]) == (
        "diffews", "1R", "fss-episodes", "toy", 0,
    )  # fmt: skip
    assert row["metrics"]["miou"] == pytest.approx(result["settings"]["1R"]["miou"]) and row["evaluated"] == EPISODES
    assert row["checkpoint"] == report["checkpoint"] and row["config_hash"] == parse_diffews_config(data).hash()
    run = synthetic_run(str(tmp_path / "syn"), FOLD.novel, per_class=2)
    with_synthetic = {**data, "eval": {**data["eval"], "synthetic_run": run, "synthetic_per_class": 2}}
    result = eval_diffews(config=with_synthetic)
    assert set(result["settings"]) == {"1R", "1R+2S"}
    rows = rows_as_dicts(read_results(results))
    assert len(rows) == 3 and sorted(r["setting"] for r in rows[1:]) == ["1R", "1R+2S"]
    assert {r["setting"]: r["synthetic_source"] for r in rows[1:]} == {"1R": "none", "1R+2S": run}
    # the flow published the rows and the trend as Prefect artifacts
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = ["diffews-eval-toy-f0", "diffews-trend-toy-f0"]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    kinds = {a.key: a.type for a in artifacts}
    assert kinds == {"diffews-eval-toy-f0": "table", "diffews-trend-toy-f0": "markdown"}
    tables = [str(a.data) for a in artifacts if a.key == "diffews-eval-toy-f0"]
    assert len(tables) == 2 and any("1R+2S" in t and "baseline: support-prior" in t for t in tables)


def test_cli_train_and_eval(trained, tmp_path):
    tmp, data, report = trained
    unused = tmp_path / "unused-runs"
    results = tmp_path / "cli-results"
    path = tmp_path / "diffews.yaml"
    run = {**data["run"], "out_dir": str(unused)}
    path.write_text(yaml.safe_dump({**data, "run": run, "eval": {**data["eval"], "results_dir": str(results)}}))
    out = runner.invoke(app, ["diffews", "train", str(path), "--out", str(tmp / "runs")])
    assert out.exit_code == 0, out.output
    # --out points at the trained run folder: the same checkpoint, reused (same seconds), nothing under run.out_dir
    assert f"checkpoint: {report['checkpoint']}" in out.output
    assert f"trained {STEPS} steps in {report['seconds']} s" in out.output and not unused.exists()
    out = runner.invoke(app, ["diffews", "eval", str(path), "--out", str(tmp / "runs")])
    assert out.exit_code == 0, out.output
    assert f"{EPISODES} episodes" in out.output and "baseline: support-prior" in out.output
    assert "baseline: all-background" in out.output and "1R" in out.output
    (row,) = rows_as_dicts(read_results(str(results)))
    assert f"{100 * row['metrics']['miou']:.2f}" in out.output and row["checkpoint"] == report["checkpoint"]
    assert "benchmark rows: " + str(results) in out.output


def test_cli_load_checks_the_unet_strictly(trained, tmp_path):
    _, _, report = trained
    for folder in (report["checkpoint"], str(Path(report["checkpoint"]) / "unet")):
        out = runner.invoke(app, ["diffews", "load", folder])
        assert out.exit_code == 0, out.output
        assert "conv_in_ref: (32, 8, 3, 3)" in out.output and "missing keys: 0" in out.output
        assert "loaded strictly: all keys match" in out.output
    sd_unet = tmp_path / "sd-unet"
    shutil.copytree(Path(TOY_SD) / "unet", sd_unet)
    out = runner.invoke(app, ["diffews", "load", str(sd_unet)])
    assert out.exit_code == 1 and "missing keys: 2" in out.output and "unexpected keys: 0" in out.output
    assert "conv_in_ref.bias" in out.output and "conv_in_ref.weight" in out.output
    assert f"error: {sd_unet} does not load strictly" in out.output and "all keys match" not in out.output
    out = runner.invoke(app, ["diffews", "load", str(tmp_path / "nowhere")])
    assert out.exit_code == 1 and "nowhere is not a folder" in out.output
    edited = tmp_path / "edited"
    shutil.copytree(report["checkpoint"], edited)
    config = edited / "unet" / "config.json"
    config.write_text(config.read_text().replace('"norm_eps"', '"norm_eps" ', 1))  # same config, other bytes
    out = runner.invoke(app, ["diffews", "load", str(edited)])
    assert out.exit_code == 1 and "config.json" in out.output and "sha256" in out.output
    assert "all keys match" not in out.output


def test_cli_reports_bad_configs_on_one_line(trained, tmp_path):
    tmp, data, _ = trained
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "train": {**data["train"], "max_shots": 0}}))
    (tmp_path / "cli.yaml").write_text(yaml.safe_dump(data))
    out = runner.invoke(app, ["diffews", "train", str(bad)])
    assert out.exit_code == 1 and out.output.startswith(f"error: {bad}: invalid configuration (1 error(s))")
    assert "field 'train.max_shots'" in out.output and "Traceback" not in out.output
    gpu_only = tmp_path / "bf16.yaml"
    gpu_only.write_text(yaml.safe_dump({**data, "run": {**data["run"], "precision": "bf16"}}))
    out = runner.invoke(app, ["diffews", "eval", str(gpu_only)])
    assert out.exit_code == 1 and "Traceback" not in out.output
    (line,) = [text for text in out.stderr.splitlines() if text.startswith("error:")]  # errors go to stderr
    assert "error:" not in out.stdout
    # the pre-flight's line, before Prefect starts: no flow ran, so there is no log file to name
    assert line.startswith("error: run.precision: bf16 needs a GPU") and "(traceback in " not in line
    for option, value, field in (("--shots", "0", "eval.shots"), ("--checkpoint", "", "eval.checkpoint")):
        out = runner.invoke(app, ["diffews", "eval", str(bad.with_name("cli.yaml")), option, value])
        assert out.exit_code == 1 and f"field '{field}'" in out.output, out.output  # given values are checked
    out = runner.invoke(app, ["diffews", "eval", str(tmp_path / "nope.yaml")])
    assert out.exit_code == 1 and out.output.strip() == f"error: {tmp_path / 'nope.yaml'}: config file not found"


def test_deployment_flows_train_and_evaluate_a_fold(tmp_path):
    path = tmp_path / "diffews.yaml"
    data = config(tmp_path, eval={"synthetic_per_class": 2})  # the deployment sets the run, the file N
    path.write_text(yaml.safe_dump({**data, "dataset": {**data["dataset"], "fold": 3}}))  # the fold is a parameter
    report = train_diffews_fold(config_path=str(path), dataset="toy", fold=0)
    expected = parse_diffews_config(data)
    assert report["train_dir"] == expected.train_dir() and report["steps"] == STEPS
    assert Path(report["checkpoint"], "COMPLETE.json").is_file()
    run = synthetic_run(str(tmp_path / "nightly"), FOLD.novel, per_class=2)
    result = eval_diffews_fold(config_path=str(path), dataset="toy", fold=0, synthetic_run=run)
    assert result["checkpoint"] == report["checkpoint"] and result["fold"] == 0
    assert set(result["settings"]) == {"1R", "1R+2S"} and result["synthetic_source"] == run
    rows = rows_as_dicts(read_results(data["eval"]["results_dir"]))
    assert sorted(r["setting"] for r in rows) == sorted(result["settings"]) and {r["fold"] for r in rows} == {0}
    assert Path(result["table_file"]).is_file()
    authors = eval_diffews_fold(
        config_path=str(path), dataset="toy", fold=0, checkpoint=str(Path(report["checkpoint"]) / "unet")
    )
    assert authors["trained_text_embedding_sha256"] is None and set(authors["settings"]) == {"1R"}
    assert len(read_results(data["eval"]["results_dir"])) == len(rows) + 1
