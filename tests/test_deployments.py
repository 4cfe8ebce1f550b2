"""prefect.yaml: a generate deployment per (dataset, fold), HSNet deployments, schedules; deployment flows; GPU slot."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from maskforge.flows.deployments import _overrides, generate_fold
from maskforge.flows.serve import serve_env
from maskforge.storage.reader import RunReader
from maskforge.tasks.config import load_config
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.maskdiff.config import load_maskdiff_config
from maskforge.tasks.wrappers import GPU_LIMIT_ENV, gpu_slot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deployments():
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def test_one_deployment_per_dataset_fold(deployments):
    expected = {f"{d}-f{f}" for d in ("toy", "pascal", "coco") for f in range(4)} | {"fss-f0"}
    gfss = {
        f"gfss-{stage}-{d}-f{f}" for stage in ("base", "novel") for d in ("toy", "pascal", "coco") for f in range(4)
    }
    diffews = {
        f"diffews-{stage}-{d}-f{f}" for stage in ("train", "eval") for d in ("toy", "pascal", "coco") for f in range(4)
    }
    maskdiff = {f"maskdiff-{stage}-{d}-f{f}" for stage in ("train", "eval") for d in ("toy", "coco") for f in range(4)}
    assert expected | {"hsnet-train-toy-f0", "hsnet-eval-toy-f0"} | gfss | diffews | maskdiff == set(deployments)
    for name in maskdiff:  # per (dataset, fold); K and the data seed are parameters
        d = deployments[name]
        _, stage, dataset, fold = name.split("-")
        assert d["entrypoint"] == f"flows/deployments.py:{stage}_maskdiff_fold"
        assert (d["parameters"]["dataset"], d["parameters"]["fold"]) == (dataset, int(fold[1:]))
        assert d["parameters"]["config_path"] == f"configs/maskdiff-{dataset}.yaml"
        assert ("synthetic_runs" in d["parameters"]) == (stage == "train")
    for name in diffews:  # per (dataset, fold); training takes synthetic_runs, evaluation a synthetic_run
        d = deployments[name]
        _, stage, dataset, fold = name.split("-")
        assert d["entrypoint"] == f"flows/deployments.py:{stage}_diffews_fold"
        assert (d["parameters"]["dataset"], d["parameters"]["fold"]) == (dataset, int(fold[1:]))
        assert d["parameters"]["config_path"] == f"configs/diffews-{dataset}.yaml"
        assert ("synthetic_runs" if stage == "train" else "synthetic_run") in d["parameters"]
    for name in gfss:  # per (dataset, fold); the novel stage takes the synthetic runs as a parameter
        d = deployments[name]
        _, stage, dataset, fold = name.split("-")
        assert d["entrypoint"] == f"flows/deployments.py:train_gfss_{stage}_fold"
        assert (d["parameters"]["dataset"], d["parameters"]["fold"]) == (dataset, int(fold[1:]))
        assert d["parameters"]["config_path"] == f"configs/gfss-{dataset}.yaml"
        assert ("synthetic_runs" in d["parameters"]) == (stage == "novel")
    for name in expected:
        d = deployments[name]
        dataset, fold = name.rsplit("-f", 1)
        assert d["entrypoint"] == "flows/deployments.py:generate_fold"
        assert (d["parameters"]["dataset"], d["parameters"]["fold"]) == (dataset, int(fold))
        assert d["work_pool"]["name"] == "maskforge-process"
        # nightly at 02:00 with an explicit timezone; only the toy fold 0 schedule is on out of the box
        assert d["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": name == "toy-f0"}]


def test_entrypoints_take_their_parameters_and_configs_validate(deployments):
    for name, d in deployments.items():
        path, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        inspect.signature(flow.fn).bind(**d["parameters"])  # a parameter the flow does not take raises
        params = d["parameters"]
        if func == "generate_fold":
            config = load_config(
                ROOT / params["config_path"],
                _overrides(params["dataset"], params["fold"], params.get("root"), **{"shots.k": params.get("shots")}),
            )
            assert (config.dataset.name, config.dataset.fold, config.shots.k) == (params["dataset"], params["fold"], 1)
        if func.endswith("diffews_fold"):
            more = {"eval.synthetic_run": params.get("synthetic_run")}
            config = load_diffews_config(
                ROOT / params["config_path"], _overrides(params["dataset"], params["fold"], None, **more)
            )
            assert (config.dataset.name, config.dataset.fold) == (params["dataset"], params["fold"])
        if func.endswith("maskdiff_fold"):
            more = {"finetune.shots": params["shots"], "finetune.data_seed": params["data_seed"]}
            config = load_maskdiff_config(
                ROOT / params["config_path"], _overrides(params["dataset"], params["fold"], None, **more)
            )
            assert (config.dataset.name, config.dataset.fold, config.finetune.shots) == (
                params["dataset"],
                params["fold"],
                5,
            )
        if func.startswith("train_gfss"):
            config = load_gfss_config(ROOT / params["config_path"], _overrides(params["dataset"], params["fold"], None))
            assert (config.dataset.name, config.dataset.fold) == (params["dataset"], params["fold"])


def test_serve_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    env = serve_env(tmp_path, 4301)
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4301/api" and env["PREFECT_HOME"] == str(tmp_path / ".prefect")
    assert env[GPU_LIMIT_ENV] == "gpu" and env["MASKFORGE_HOME"] == str(tmp_path)


@pytest.mark.prefect
def test_generate_fold_overrides_the_config_file(tmp_path, prefect_harness):
    config = tmp_path / "small.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "dep", "out_dir": str(tmp_path / "runs")},
                "dataset": {"name": "toy", "fold": 0, "toy": {"image_size": 48, "n_train": 60, "n_val": 8}},
                "shots": {"k": 3},
                "base": {"subset_size": 10},
                "generation": {"samples_per_class": 1},
            }
        )
    )
    result = generate_fold(config_path=str(config), dataset="toy", fold=2, shots=1)
    summary = RunReader(result["url"]).summary
    assert summary["fold"] == 2 and all(len(s) == 1 for s in summary["shots"].values())


@pytest.mark.prefect
def test_gpu_slot_is_strict(monkeypatch, prefect_harness):
    monkeypatch.delenv(GPU_LIMIT_ENV, raising=False)
    with gpu_slot():  # unset: no limit, nothing to acquire
        pass
    monkeypatch.setenv(GPU_LIMIT_ENV, "no-such-limit")
    with pytest.raises(Exception, match="no-such-limit"):
        with gpu_slot():
            pass
    with gpu_slot("cpu"):  # CPU work never waits for (or needs) the GPU limit
        pass
