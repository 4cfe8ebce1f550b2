"""MaskDiff under Prefect and from the CLI: train and eval flows, `maskforge maskdiff train|eval`, deployments."""

from __future__ import annotations

import pytest
import yaml
from test_maskdiff_train import config
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.flows.deployments import eval_maskdiff_fold, train_maskdiff_fold
from maskforge.flows.learners import learner_flow
from maskforge.storage.results import read_results, rows_as_dicts
from maskforge.tasks.maskdiff.config import parse_maskdiff_config

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()
train_maskdiff, eval_maskdiff = learner_flow("train_maskdiff"), learner_flow("eval_maskdiff")
#: few detections and samplings keep evaluation to seconds
EVAL = {"sampling_seeds": 2, "max_images": 6, "score_threshold": 0.0, "batch_images": 6}
HEAD = {"arch": "tiny", "size": 32, "sampler": "ddim", "ddim_steps": 2}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both stages trained once through the Prefect flow: (folder, config dict, reports)."""
    tmp = tmp_path_factory.mktemp("maskdiff-flows")
    data = config(tmp, eval=EVAL, head=HEAD)
    return tmp, data, train_maskdiff(config=data)


def test_flows_train_then_eval_append_one_row(trained):
    tmp, data, reports = trained
    cfg = parse_maskdiff_config(data)
    assert reports["base"]["stage_dir"] == cfg.base_dir() and reports["finetune"]["stage_dir"] == cfg.finetune_dir()
    result = eval_maskdiff(config=data)
    assert result["sampling_seeds"] == 2 and result["images"] == 6
    for part in ("all", "base", "novel"):
        assert -1 <= result["segm"][part]["ap"] <= 1 and result["segm"][part]["ap_std"] >= 0
    (row,) = rows_as_dicts(read_results(cfg.eval.results_dir))
    assert (row["model"], row["protocol"], row["shots"], row["runs"]) == ("maskdiff", "fsis-coco", 2, 2)
    assert dict(row["metrics"])["segm_ap_novel"] == pytest.approx(result["segm"]["novel"]["ap"])
    again = train_maskdiff(config=data)  # both stages reused
    assert again["finetune"]["seconds"] == reports["finetune"]["seconds"]


def test_cli_train_and_eval(trained):
    tmp, data, _ = trained
    path = tmp / "cli.yaml"
    path.write_text(yaml.safe_dump(data))
    train = runner.invoke(app, ["maskdiff", "train", str(path), "--out", data["run"]["out_dir"]])
    assert train.exit_code == 0, train.output
    assert "K-shot stage:" in train.output and "-k2-s0-" in train.output
    result = runner.invoke(app, ["maskdiff", "eval", str(path)])
    assert result.exit_code == 0, result.output
    assert "MaskDiff on toy fold 0, 2-shot" in result.output and "novel" in result.output
    bad = runner.invoke(app, ["maskdiff", "train", str(path), "--shots", "4"])
    assert bad.exit_code == 1 and "finetune.shots must be one of (1, 2, 3, 5, 10, 30) (TFA's settings) (got 4)" in (
        bad.output
    )
    zero = runner.invoke(app, ["maskdiff", "train", str(path), "--shots", "0"])  # 0 is a value, not "not given"
    assert zero.exit_code == 1 and "field 'finetune.shots'" in zero.output and "(got 0)" in zero.output
    empty = runner.invoke(app, ["maskdiff", "eval", str(path), "--out", ""])  # not "here", not the file's folder
    assert empty.exit_code == 1 and "field 'run.out_dir': String should have at least 1 character" in empty.output
    missing = runner.invoke(app, ["maskdiff", "eval", str(path), "--seed", "7"])
    assert missing.exit_code == 1 and "train" in missing.output


def test_deployment_flows_train_and_evaluate_a_fold(trained, tmp_path):
    tmp, data, _ = trained
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump({**data, "dataset": {**data["dataset"], "fold": 2}}))
    out = train_maskdiff_fold(config_path=str(path), dataset="toy", fold=0, shots=2, data_seed=0)
    assert out["segm"]["novel"]["ap"] >= -1 and out["fold"] == 0  # trained stages reused, then evaluated
    again = eval_maskdiff_fold(config_path=str(path), dataset="toy", fold=0, shots=2, data_seed=0)
    assert again["finetune_dir"] == out["finetune_dir"]


def test_a_wrong_synthetic_run_fails_before_the_base_stage_trains(tmp_path):
    data = config(tmp_path, eval=EVAL, head=HEAD, finetune={"synthetic_runs": [str(tmp_path / "typo")]})
    with pytest.raises(Exception, match=r"finetune\.synthetic_runs: .*typo: no such run folder"):
        train_maskdiff(config=data)
    assert not any(tmp_path.rglob("*.safetensors")) and not any(tmp_path.rglob("COMPLETE.json"))  # nothing trained
