"""prefect.yaml: a generate deployment per (dataset, fold), HSNet deployments, schedules; deployment flows; GPU slot."""

import importlib
import inspect
import io
import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from maskforge.flows.deployments import _overrides, generate_fold, parameter_overrides
from maskforge.flows.serve import serve_env
from maskforge.storage.reader import RunReader
from maskforge.tasks.config import load_config
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.maskdiff.config import load_maskdiff_config
from maskforge.tasks.registry import learner as registered
from maskforge.tasks.registry import learners
from maskforge.tasks.wrappers import GPU_LIMIT_ENV, gpu_slot, stage_task

ROOT = Path(__file__).resolve().parents[1]


def tfa_overrides(func: str, params: dict) -> dict:
    """The config overrides a TFA-split entry point makes of a deployment's parameters (data_seeds, retries: flow
    arguments)."""
    learner = registered("maskdiff")
    spec = next(d for d in learner.deployments if d.function == func)
    values = {p.name: params.get(p.name, p.default) for p in spec.params}
    return parameter_overrides(learner, spec, values)[0]


@pytest.fixture(scope="module")
def deployments():
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def _prefect_loads(path: Path) -> tuple[list[dict], dict]:
    """Return the deployments and actions Prefect's own `prefect deploy` reads from a prefect.yaml (anchors and `<<`
    merges expanded, the `definitions` section ignored)."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from rich.console import Console

    return _load_deploy_configs_and_actions(path, console=Console(file=io.StringIO()))


def test_prefect_expands_the_file_to_the_recorded_deployment_set():
    """prefect.yaml is written with `definitions` and YAML anchors (one block per flow kind, one line per dataset and
    fold); `prefect deploy --all` (what `maskforge serve` runs) must still see exactly the 79 deployments the
    longhand file held: names, entry points, parameters, work pool, tags and schedules, recorded before the rewrite,
    plus the 4 MaskDiff deployments on TFA's split, the 2 of the nightly chain and the nightly retention added since
    (issues 31 and 33; recorded in the same file, with the generate deployments' `round: scheduled`)."""
    recorded = json.loads((ROOT / "tests" / "deployments_before.json").read_text())
    loaded, actions = _prefect_loads(ROOT / "prefect.yaml")
    keys = ("entrypoint", "parameters", "work_pool", "tags", "schedules")
    expanded = {d["name"]: {k: d[k] for k in keys if k in d} for d in loaded}
    assert len(loaded) == len(expanded) == 86  # no name twice
    assert sorted(expanded) == sorted(recorded)
    differing = sorted(name for name in recorded if expanded[name] != recorded[name])
    assert not differing, [(name, expanded[name], recorded[name]) for name in differing[:3]]
    assert all(d.get("description") for d in loaded if not d["name"].startswith("hsnet-"))
    assert actions["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $MASKFORGE_HOME }}"}}
    ]
    # readable: every deployment is one line of the table (two for the HSNet evaluation), not a copied block
    text = (ROOT / "prefect.yaml").read_text()
    table = text.split("\ndeployments:\n", 1)[1]
    assert len([line for line in table.splitlines() if line.startswith("- {")]) == 86
    assert len(text.splitlines()) < 245 and "definitions:" in text


def test_one_deployment_per_dataset_fold(deployments):
    expected = {f"{d}-f{f}" for d in ("toy", "pascal", "coco") for f in range(4)} | {"fss-f0"}
    gfss = {
        f"gfss-{stage}-{d}-f{f}" for stage in ("base", "novel") for d in ("toy", "pascal", "coco") for f in range(4)
    }
    diffews = {
        f"diffews-{stage}-{d}-f{f}" for stage in ("train", "eval") for d in ("toy", "pascal", "coco") for f in range(4)
    }
    maskdiff = {f"maskdiff-{stage}-{d}-f{f}" for stage in ("train", "eval") for d in ("toy", "coco") for f in range(4)}
    tfa = {"maskdiff-train-coco-tfa", "maskdiff-eval-coco-tfa", "maskdiff-eval-voc-tfa", "maskdiff-draws-coco-tfa"}
    chain = {"chain-hsnet-eval-toy-f0", "chain-gfss-novel-toy-f0"}
    hsnet = {"hsnet-train-toy-f0", "hsnet-eval-toy-f0"}
    assert expected | hsnet | gfss | diffews | maskdiff | tfa | chain | {"runs-gc"} == set(deployments)
    for name in expected:  # nightly: each night is a new round (its scheduled date)
        assert deployments[name]["parameters"]["round"] == "scheduled"
    for name in tfa:  # TFA's split has no fold axis: no fold or dataset parameter
        d = deployments[name]
        assert d["entrypoint"].startswith("flows/deployments.py:") and "fold" not in d["parameters"]
        assert d["parameters"]["config_path"] == "configs/maskdiff-tfa.yaml" and "dataset" not in d["parameters"]
    assert deployments["maskdiff-draws-coco-tfa"]["parameters"]["data_seeds"] == "0-9"
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
        if func.endswith("_tfa") or func.endswith("_tfa_draws"):
            config = load_maskdiff_config(ROOT / params["config_path"], tfa_overrides(func, params))
            assert (config.split, config.dataset.name, config.finetune.shots) == ("tfa", "coco", 5)
            assert config.eval.split == ("voc2012-val" if "voc_root" in params else "minival")
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


#: Every registered learner's GPU stages (the declared ones: a new learner is covered without editing this test).
LEARNER_STAGES = [(one.name, key) for one in learners() for key, stage in one.stages.items() if stage.gpu]


def test_every_learner_declares_its_gpu_stages():
    assert len(LEARNER_STAGES) == 10 and ("maskdiff", "finetune") in LEARNER_STAGES


@pytest.mark.prefect
@pytest.mark.parametrize("learner, key", LEARNER_STAGES)
def test_every_learner_stage_waits_for_the_gpu_slot(monkeypatch, prefect_harness, learner, key):
    spec = registered(learner)
    module, _, stage_name = spec.stages[key].fn.partition(":")

    def stage(config, log):
        raise AssertionError(f"{stage_name} ran before it held the GPU slot")

    monkeypatch.setattr(importlib.import_module(spec.package + module), stage_name, stage)
    monkeypatch.setenv(GPU_LIMIT_ENV, "no-such-limit")
    config = spec.config(ROOT / "configs" / spec.example, {"run.device": "auto"})
    with pytest.raises(Exception, match="no-such-limit"):
        stage_task(learner, key).fn(config)
    # Work configured for the CPU does not wait for the GPU: the stage runs (here: the stand-in's error).
    monkeypatch.setattr("maskforge.tasks.wrappers.get_run_logger", lambda: logging.getLogger("test"))
    config = spec.config(ROOT / "configs" / spec.example, {"run.device": "cpu"})
    with pytest.raises(AssertionError, match="ran before"):
        stage_task(learner, key).fn(config)


GENERATION_STAGES = [
    ("learn_embedding_task", "learn_shot_embedding", "diffusion.device", ("plan", 1, "shot")),
    ("write_generated_part_task", "write_generated_part", "diffusion.device", ("plan", 1, "run")),
    ("write_refined_part_task", "write_refined_part", "refinement.device", ("plan", 1, "run")),
]


@pytest.mark.prefect
@pytest.mark.parametrize("task_name, stage_name, device_field, args", GENERATION_STAGES)
def test_generation_stages_wait_for_the_gpu_slot_of_their_device(
    monkeypatch, prefect_harness, task_name, stage_name, device_field, args
):
    wrappers = importlib.import_module("maskforge.tasks.wrappers")

    def stage(*_):
        raise AssertionError(f"{stage_name} ran before it held the GPU slot")

    monkeypatch.setattr(wrappers, stage_name, stage)
    monkeypatch.setenv(GPU_LIMIT_ENV, "no-such-limit")
    with pytest.raises(Exception, match="no-such-limit"):
        getattr(wrappers, task_name).fn(load_config(ROOT / "configs" / "demo.yaml", {device_field: "auto"}), *args)
    with pytest.raises(AssertionError, match="ran before"):  # configured for the CPU: no wait for the GPU
        getattr(wrappers, task_name).fn(load_config(ROOT / "configs" / "demo.yaml", {device_field: "cpu"}), *args)


def test_serve_stops_every_process_it_started_even_in_another_session(tmp_path):
    """The worker's flow-run subprocesses run in sessions of their own and outlived `maskforge serve`'s stop; the
    stop now lists the whole tree first and ends every member (SIGTERM, then SIGKILL past the timeout)."""
    import subprocess
    import time

    import psutil

    from maskforge.flows.serve import stop_process_tree

    script = (
        "setsid sleep 300 & "  # a child in its own session, like a flow-run subprocess
        "(trap '' TERM; sleep 300) & "  # a child that ignores SIGTERM: killed after the timeout
        "sleep 300 & wait"
    )
    proc = subprocess.Popen(["bash", "-c", script])
    deadline = time.monotonic() + 10
    while len(psutil.Process(proc.pid).children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert len(tree) >= 3  # the session-leading sleep, the SIGTERM-ignoring one, the plain one
    assert any(p.pid == os.getsid(p.pid) for p in tree)  # one is a session leader of its own
    killed = stop_process_tree(proc, timeout=3)
    assert proc.returncode is not None and killed  # the SIGTERM-ignoring member needed SIGKILL
    time.sleep(0.2)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_the_chain_deployments_trigger_on_their_folds_completed_runs(deployments):
    """The nightly chain's learners start on the event a completed generation of their dataset fold emits
    (flows/run_events.py), with its run URL as their synthetic run; nothing else carries a trigger."""
    from maskforge.flows.run_events import RUN_COMPLETED, run_resource_id

    loaded, _ = _prefect_loads(ROOT / "prefect.yaml")  # what `prefect deploy` turns into automations
    triggered = {d["name"]: d["triggers"] for d in loaded if d.get("triggers")}
    assert set(triggered) == {"chain-hsnet-eval-toy-f0", "chain-gfss-novel-toy-f0"}
    for name, triggers in triggered.items():
        assert triggers == [
            {
                "type": "event",
                "match": {"prefect.resource.id": run_resource_id("toy", 0)},
                "expect": [RUN_COMPLETED],
                "parameters": {"synthetic_run": "{{ event.payload.url }}"},
            }
        ]
        inspect.signature(
            getattr(importlib.import_module("maskforge.flows.deployments"), _func(deployments[name])).fn
        ).bind(
            **{**deployments[name]["parameters"], "synthetic_run": "runs/x"}
        )  # the trigger's parameter is one the entry point takes


def _func(deployment: dict) -> str:
    """The entry point's function name."""
    return deployment["entrypoint"].split(":")[1]
