"""HSNet flows on the toy world under Prefect and from the CLI: training beats trivial baselines, synthetic supports,
results."""

from pathlib import Path

import pytest
import yaml
from tiny import toy_run
from typer.testing import CliRunner

from maskforge.eval.folds import toy_fold
from maskforge.flows.cli import app
from maskforge.flows.generate import generate
from maskforge.flows.learners import learner_flow
from maskforge.storage.results import read_config, read_results, row_metric
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import parse_config
from maskforge.tasks.hsnet.config import parse_hsnet_config
from maskforge.tasks.hsnet.train import train_hsnet as train_hsnet_fn

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()
train_hsnet, eval_hsnet = learner_flow("train_hsnet"), learner_flow("eval_hsnet")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores: several times faster than 2 when contended), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


#: The short CPU run of the "beats trivial baselines" test (figures in docs/hsnet.md).
TRAIN_STEPS, TRAIN_BATCH, EVAL_EPISODES = 300, 4, 200


def hsnet_config(root: Path, **sections) -> dict:
    """A tiny HSNet on 64 px toy images of fold 0: frozen random BN-calibrated ResNet, 300 steps of 4 episodes."""
    data = {
        "run": {"name": "toy", "out_dir": str(root / "runs"), "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 64, "n_train": 200, "n_val": 60}},
        "model": {"backbone": "tiny", "img_size": 64, "tiny_maxpool": True, "tiny_calibration_images": 128},
        "train": {"steps": TRAIN_STEPS, "batch_size": TRAIN_BATCH, "log_every": 100},
        "eval": {"episodes": EVAL_EPISODES, "results_dir": str(root / "results")},
    }
    for name, values in sections.items():
        data[name] = {**data[name], **values}
    return parse_hsnet_config(data).resolved()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the tiny HSNet once through the Prefect flow."""
    root = tmp_path_factory.mktemp("hsnet")
    config = hsnet_config(root)
    return root, config, train_hsnet(config=config)


def synthetic_run(root: Path, fold: int, per_class: int) -> str:
    """Generate a small copy-paste run of the toy fold's novel classes (64 px) and return its folder."""
    config = parse_config(
        {
            "run": {"name": f"syn{fold}", "out_dir": str(root / "synthetic")},
            "dataset": {"name": "toy", "fold": fold, "toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "base": {"subset_size": 20},
            "generation": {"samples_per_class": per_class},
        }
    ).resolved()
    return generate(config=config)["url"]


def test_tiny_hsnet_beats_trivial_baselines(trained):
    root, config, report = trained
    assert report["steps"] == TRAIN_STEPS and Path(report["checkpoint"]).is_file()
    assert report["losses"][-1] < report["losses"][0]
    result = eval_hsnet(config=config)
    assert result["episodes"] == EVAL_EPISODES and set(result["settings"]) == {"1R"}
    ours = result["settings"]["1R"]
    background, prior = result["baselines"]["all-background"], result["baselines"]["support-prior"]
    assert background["miou"] == 0.0  # no foreground predicted: foreground IoU 0 for every class
    assert ours["miou"] > prior["miou"] + 0.03 and ours["miou"] > background["miou"]
    assert ours["fb_iou"] > max(prior["fb_iou"], background["fb_iou"])
    print(
        f"toy HSNet mIoU {ours['miou']:.4f} FB-IoU {ours['fb_iou']:.4f}; prior {prior['miou']:.4f}; "
        f"trained {report['seconds']} s"
    )
    rows = read_results(str(root / "results")).to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["backbone"], row["dataset"], row["fold"], row["shots"]) == ("hsnet", "tiny", "toy", 0, 1)
    assert row["synthetic_source"] == "none" and row["setting"] == "1R"
    assert row_metric(row, "miou") == pytest.approx(ours["miou"]) and row["evaluated"] == EVAL_EPISODES
    assert row_metric(row, "fb_iou") == pytest.approx(ours["fb_iou"]) and row["protocol"] == "fss-episodes"
    assert row["config_hash"] == parse_hsnet_config(config).hash() and row["code_version"].startswith("0.1.0")
    # the flow published the rows as a Prefect table artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["hsnet-eval-toy-f0"]))
        )
    assert artifacts and artifacts[0].type == "table"
    assert "1R" in str(artifacts[0].data) and "baseline: support-prior" in str(artifacts[0].data)


def test_train_twice_reuses_the_checkpoint(trained):
    _, config, report = trained
    before = Path(report["checkpoint"]).stat().st_mtime_ns
    again = train_hsnet(config=config)
    assert again["checkpoint"] == report["checkpoint"] and again["losses"] == report["losses"]
    assert Path(report["checkpoint"]).stat().st_mtime_ns == before


def test_eval_with_synthetic_supports_reports_both_settings(trained):
    root, config, _ = trained
    run = toy_run(str(root / "generated"), toy_fold(0).novel, per_class=3, size=64)
    cfg = hsnet_config(
        root,
        eval={"episodes": 20, "synthetic_run": run, "synthetic_per_class": 2, "results_dir": str(root / "syn-results")},
    )
    cfg["run"] = config["run"]  # same training run folder
    result = eval_hsnet(config=cfg)
    assert set(result["settings"]) == {"1R", "1R+2S"}
    assert result["synthetic_source"] == run and result["synthetic_per_class"] == 2
    rows = {r["setting"]: r for r in read_results(str(root / "syn-results")).to_pylist()}
    assert rows["1R"]["synthetic_source"] == "none" and rows["1R"]["synthetic_per_class"] == 0
    assert rows["1R+2S"]["synthetic_source"] == run and rows["1R+2S"]["synthetic_per_class"] == 2
    stored_hash, stored = read_config(str(root / "syn-results"), rows["1R"]["config_hash"])  # stored with the rows
    assert stored_hash == rows["1R"]["config_hash"] == parse_hsnet_config(cfg).hash()
    assert stored["eval"]["synthetic_run"] == run and "results_dir" not in stored["eval"]
    too_many = hsnet_config(root, eval={"episodes": 5, "synthetic_run": run, "synthetic_per_class": 4})
    too_many["run"] = config["run"]
    with pytest.raises(ConfigError, match="holds 3 generated sample.* fewer than the 4 asked for"):
        eval_hsnet(config=too_many)
    # a copy-paste run of the generation run's own real shots: extra real images, not synthetic supports
    pasted_run = synthetic_run(root, fold=0, per_class=3)
    pasted = hsnet_config(root, eval={"episodes": 5, "synthetic_run": pasted_run, "synthetic_per_class": 1})
    pasted["run"] = config["run"]
    with pytest.raises(ConfigError, match=r"holds 0 generated sample\(s\) of class \d+ \('real'-source copy-paste"):
        eval_hsnet(config=pasted)


def test_training_with_synthetic_supports(tmp_path):
    # fold 1's novel classes are base classes of fold 0, so a fold-1 run feeds fold-0 training's support pools
    run = synthetic_run(tmp_path, fold=1, per_class=8)
    small = {"name": "toy", "fold": 0, "toy": {"image_size": 64, "n_train": 40, "n_val": 8}}
    cfg = parse_hsnet_config(
        hsnet_config(tmp_path, dataset=small, train={"steps": 3, "batch_size": 8, "synthetic_run": run})
    )
    report = train_hsnet_fn(cfg, log=lambda _: None)
    assert report["steps"] == 3 and report["synthetic_support_draws"] > 0
    wrong = synthetic_run(tmp_path, fold=0, per_class=1)  # fold 0's novel classes: none is a base class of fold 0
    cfg = parse_hsnet_config(hsnet_config(tmp_path, train={"steps": 1, "synthetic_run": wrong}))
    with pytest.raises(ConfigError, match="holds no sample of a base class of toy fold 0"):
        train_hsnet_fn(cfg, log=lambda _: None)


def test_cli_train_and_eval(trained, tmp_path):
    _, config, report = trained
    config["eval"].update(episodes=30, results_dir=str(tmp_path / "results"))
    path = tmp_path / "hsnet.yaml"
    path.write_text(yaml.safe_dump(config))
    trained_again = runner.invoke(app, ["hsnet", "train", str(path)])
    assert trained_again.exit_code == 0, trained_again.output
    assert report["checkpoint"] in trained_again.output.replace("\n", "")
    evaluated = runner.invoke(app, ["hsnet", "eval", str(path)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "30 episodes" in evaluated.output and "baseline: support-prior" in evaluated.output
    assert len(read_results(str(tmp_path / "results"))) == 1
    run = toy_run(str(tmp_path / "generated"), toy_fold(0).novel, per_class=2, size=64)
    options = ["--checkpoint", report["checkpoint"], "--synthetic", run, "--per-class", "2", "--shots", "1"]
    with_synthetic = runner.invoke(app, ["hsnet", "eval", str(path), *options])
    assert with_synthetic.exit_code == 0, with_synthetic.output
    assert "1R+2S" in with_synthetic.output
    rows = read_results(str(tmp_path / "results")).to_pylist()
    _, stored = read_config(str(tmp_path / "results"), rows[-1]["config_hash"])
    assert stored["eval"]["synthetic_run"] == run and stored["eval"]["synthetic_per_class"] == 2
    assert stored["eval"]["checkpoint"] == report["checkpoint"]
    zero = runner.invoke(app, ["hsnet", "eval", str(path), "--per-class", "0"])
    assert zero.exit_code == 1 and "eval.synthetic_per_class" in zero.output


def test_cli_reports_config_and_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"backbone": "tiny", "img_size": 8}, "train": {"lr": 0}}))
    result = runner.invoke(app, ["hsnet", "train", str(bad)])
    assert result.exit_code == 1
    out = result.output.replace("\n", "")
    assert "field 'model.img_size'" in out and "field 'train.lr'" in out and str(bad) in out
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        yaml.safe_dump({"model": {"backbone": "tiny"}, "eval": {"checkpoint": str(tmp_path / "none.safetensors")}})
    )
    result = runner.invoke(app, ["hsnet", "eval", str(missing)])
    assert (
        result.exit_code == 1 and "none.safetensors" in result.output.replace("\n", "") and "not found" in result.output
    )
    weights = tmp_path / "r50.yaml"
    weights.write_text(yaml.safe_dump({"model": {"backbone": "resnet50"}, "train": {"steps": 1}}))
    result = runner.invoke(app, ["hsnet", "train", str(weights)])
    assert result.exit_code == 1 and "model.weights is required" in result.output
