"""The learner interface (tasks/learner.py) and its registry (tasks/registry.py): every declaration's references
resolve, the tasks, flows, CLI groups and deployment entry points are built from them, and a fifth learner declared
in a package of its own plus one registry line gets all four, runs end to end and records a benchmark row."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.flows.deployments import ENTRYPOINTS, entrypoint, parameter_overrides
from maskforge.flows.learner_cli import learner_app
from maskforge.flows.learners import learner_flows
from maskforge.storage.results import read_results, rows_as_dicts
from maskforge.tasks import registry
from maskforge.tasks.learner import Learner
from maskforge.tasks.wrappers import check_task, record_task, stage_task

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _references(learner: Learner) -> list[str]:
    """Every reference a declaration makes (what a stage, a command or a deployment imports when it runs)."""
    refs = [stage.fn for stage in learner.stages.values()] + [learner.record, *learner.errors]
    refs += [stage.log for stage in learner.stages.values() if isinstance(stage.log, str)]
    refs += [f".preflight:{flow.check}" for flow in learner.flows if flow.check]
    refs += [command.show for command in learner.commands]
    for command in learner.commands:
        if command.sweep:
            refs += [command.sweep.parse, command.sweep.show, f".preflight:{command.sweep.check}"]
    for flow in learner.flows:
        if flow.sweep:
            refs += [flow.sweep.configure, flow.sweep.run, flow.sweep.caption]
    refs += [p.convert for d in learner.deployments for p in d.params if p.convert]
    return refs + ([learner.load.fn] if learner.load else [])


@pytest.mark.parametrize("name", list(registry.LEARNERS))
def test_every_reference_of_a_declaration_resolves(name):
    learner = registry.learner(name)
    for ref in _references(learner):
        target = learner.ref(ref)
        assert callable(target), ref
    assert all(issubclass(e, BaseException) for e in learner.error_types())
    # steps name stages or earlier flows; commands and deployments name declared flows
    for i, flow in enumerate(learner.flows):
        earlier = {f.name for f in learner.flows[:i]}
        assert all(step in learner.stages or step in earlier for step in flow.steps), flow.name
    assert all(learner.flow(c.flow) for c in learner.commands)
    assert all(learner.flow(d.runs) and all(learner.flow(f) for _, _, f in d.choose) for d in learner.deployments)
    assert all(name in {p.name for p in d.params} for d in learner.deployments for name, _, _ in d.choose)
    assert set(learner.run_fields()) == {f"{s}.{n}" for s, n in learner.config_class.RUN_FIELDS}


def test_the_registry_builds_the_cli_groups_flows_and_entry_points_of_every_learner():
    groups = {g.name: g for g in app.registered_groups}
    assert list(registry.LEARNERS) == [name for name in groups if name in registry.LEARNERS]
    for learner in registry.learners():
        commands = [c.name for c in groups[learner.name].typer_instance.registered_commands]
        assert commands == (["load"] if learner.load else []) + [c.name for c in learner.commands]
        assert list(learner_flows(learner.name)) == [f.name for f in learner.flows]
        for deployment in learner.deployments:
            built = ENTRYPOINTS[deployment.function]
            assert built.name == deployment.flow_name
            names = list(inspect.signature(built.fn).parameters)
            assert names == ["config_path", *(p.name for p in deployment.params)]
    # the names Prefect and the UI show did not change with the registry
    assert stage_task("gfss", "novel").name == "train-gfss-novel"
    assert check_task("gfss", "check_novel_eval_inputs").name == "check-gfss-novel-eval-inputs"
    assert record_task("maskdiff").name == "record-maskdiff-results"
    assert learner_flows("maskdiff")["maskdiff_draws"].name == "maskdiff_draws"
    assert list(inspect.signature(learner_flows("maskdiff")["maskdiff_draws"].fn).parameters) == [
        "config",
        "data_seeds",
        "retries",
    ]


def test_a_declaration_named_otherwise_than_its_registry_line_is_refused(monkeypatch):
    monkeypatch.setitem(registry.LEARNERS, "other", "maskforge.tasks.hsnet.learner")
    registry.learners.cache_clear()
    try:
        with pytest.raises(ValueError, match="LEARNER.name is 'hsnet'; the registry .* says 'other'"):
            registry.learners()
    finally:
        monkeypatch.undo()
        registry.learners.cache_clear()


# --- a fifth learner: its own package and one registry line ---------------------------------------------------------

FIFTH = {
    "__init__.py": '"""A fifth learner, written for the registry test."""\n',
    "preflight.py": '''
        """Its pre-flight checks."""


        def check_train_inputs(config):
            """Nothing to check before training."""


        def check_eval_inputs(config):
            """Three shots are refused, on one line, as a real pre-flight refuses a wrong input."""
            if config.eval.shots == 3:
                raise ValueError("eval.shots: 3 is not supported by the echo learner")
        ''',
    "stages.py": '''
        """Its stages: they echo the config (no network), as a real learner's train and evaluate would."""

        from maskforge.tasks.episode_results import artifact_table, episode_rows
        from maskforge.tasks.learner import Record, Shown


        def train(config, log):
            """Train nothing; report as a trainer does."""
            log("echo trained")
            return {"steps": 1, "seconds": 0.0, "losses": [0.25], "checkpoint": "echo.ckpt"}


        def evaluate(config, log):
            """Score 0.1 per shot, as an episodic evaluation reports."""
            score = {"miou": 0.1 * config.eval.shots, "fb_iou": 0.5, "class_iou": {"a": 0.1}}
            return {
                "settings": {"KR": score}, "baselines": {}, "backbone": "echo", "checkpoint": "echo.ckpt",
                "dataset": config.dataset.name, "fold": config.dataset.fold, "split": "val",
                "shots": config.eval.shots, "synthetic_source": "none", "synthetic_per_class": 0, "episodes": 4,
                "seed": 0,
            }


        def record(config, result):
            """One row per setting, under the model name echo."""
            rows = episode_rows("echo", config.hash(), result)
            return Record(rows, "echo-eval", artifact_table(rows, {}), "echo", "echo-trend", lambda *a: "trend")


        def show(result):
            """The score, then where the rows went."""
            return Shown((f"echo mIoU {100 * result['settings']['KR']['miou']:.1f}", f"rows: {result['table_file']}"))
        ''',
    "learner.py": '''
        """The fifth learner's declaration: it takes HSNet's config kind and reuses the shared pieces."""

        from maskforge.storage.results import HSNET_PROTOCOL
        from maskforge.tasks.hsnet.config import HsnetConfig, load_hsnet_config
        from maskforge.tasks.learner import (
            DATASET, FOLD, Command, Deployment, Flow, Learner, Option, Param, Stage,
        )

        LEARNER = Learner(
            name="echo",
            title="Echo",
            help="A fifth learner: train and evaluate.",
            package="fifth_learner",
            config=load_hsnet_config,
            config_class=HsnetConfig,
            example="hsnet-toy.yaml",
            protocol=HSNET_PROTOCOL,
            stages={
                "train": Stage(".stages:train", "train-echo", "training", lambda r: f"checkpoint: {r['checkpoint']}"),
                "eval": Stage(".stages:evaluate", "eval-echo", "evaluation"),
            },
            flows=(
                Flow("train_echo", "Train.", ("train",), check="check_train_inputs"),
                Flow("eval_echo", "Evaluate.", ("eval",), check="check_eval_inputs", record=True),
                Flow("train_eval_echo", "Both.", ("train_echo", "eval_echo")),
            ),
            record=".stages:record",
            commands=(
                Command("train", "train_echo", "Train.", "maskforge.tasks.learner:show_training"),
                Command("eval", "eval_echo", "Evaluate.", ".stages:show", (Option("--shots", "eval.shots", int, ""),)),
            ),
            deployments=(
                Deployment(
                    "train_echo_fold", "train-echo-fold", "Train and evaluate one fold.", "train_eval_echo",
                    (DATASET, FOLD, Param("shots", int | None, key="eval.shots"), Param("evaluate", bool, True)),
                    choose=(("evaluate", False, "train_echo"),),
                ),
            ),
        )
        ''',
}


@pytest.fixture
def fifth(tmp_path, monkeypatch):
    """The package fifth_learner on sys.path and its one registry line; the registry's caches cleared around."""
    package = tmp_path / "pkg" / "fifth_learner"
    package.mkdir(parents=True)
    for name, text in FIFTH.items():
        (package / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.setitem(registry.LEARNERS, "echo", "fifth_learner.learner")
    registry.learners.cache_clear()
    config = yaml.safe_load((ROOT / "configs" / "hsnet-toy.yaml").read_text())
    config.setdefault("eval", {})["results_dir"] = str(tmp_path / "results")
    config_file = tmp_path / "echo.yaml"
    config_file.write_text(json.dumps(config))
    yield registry.learner("echo"), config_file, tmp_path / "results"
    monkeypatch.undo()
    registry.learners.cache_clear()


@pytest.mark.prefect
def test_a_fifth_learner_gets_its_cli_group_flows_and_entry_point_from_one_registry_line(fifth, prefect_harness):
    learner, config_file, results = fifth
    group = learner_app(learner)
    helped = runner.invoke(group, ["--help"])
    assert helped.exit_code == 0 and "train" in helped.output and "eval" in helped.output
    # the pre-flight runs before any flow, on one line
    refused = runner.invoke(group, ["eval", str(config_file), "--shots", "3"])
    assert refused.exit_code == 1 and "eval.shots: 3 is not supported by the echo learner" in refused.output
    assert not results.exists()
    done = runner.invoke(group, ["eval", str(config_file), "--shots", "2"])
    assert done.exit_code == 0, done.output
    assert "echo mIoU 20.0" in done.output
    rows = rows_as_dicts(read_results(str(results)))
    assert [(r["model"], r["shots"], round(r["metrics"]["miou"], 3)) for r in rows] == [("echo", 2, 0.2)]
    # its deployment entry point: the parameters as declared, the switch picks the flow
    flow = entrypoint(learner, learner.deployments[0])
    assert flow.name == "train-echo-fold"
    assert list(inspect.signature(flow.fn).parameters) == ["config_path", "dataset", "fold", "shots", "evaluate"]
    both = flow(config_path=str(config_file), dataset="toy", fold=0, shots=1)
    assert both["settings"]["KR"]["miou"] == pytest.approx(0.1) and both["table_file"]
    trained = flow(config_path=str(config_file), dataset="toy", fold=0, evaluate=False)
    assert trained["checkpoint"] == "echo.ckpt"
    assert len(read_results(str(results))) == 2  # the second run trained only


@pytest.mark.parametrize("name", list(registry.LEARNERS))
def test_every_learner_is_started_by_the_chain_the_same_way(name):
    """The nightly chain's trigger passes the new run's URL as `synthetic_run` (prefect.yaml's on_run_* anchors):
    each learner's chain entry point takes it into one of the config keys that take runs, after any others."""
    learner = registry.learner(name)
    (spec,) = [d for d in learner.deployments if d.function == learner.chain]
    params = {p.name: p for p in spec.params}
    assert params["synthetic_run"].key in learner.run_fields()
    values = {p.name: p.default for p in spec.params} | {"dataset": "toy", "fold": 0, "synthetic_run": "/runs/new"}
    if "synthetic_runs" in params:
        values["synthetic_runs"] = ["/runs/old"]
    overrides, _ = parameter_overrides(learner, spec, values)
    expected = ["/runs/old", "/runs/new"] if "synthetic_runs" in params else "/runs/new"
    assert overrides[params["synthetic_run"].key] == expected
    assert (overrides["dataset.name"], overrides["dataset.fold"]) == ("toy", 0)


def test_deployment_parameters_left_empty_keep_the_files_values_and_to_parameters_set_several_keys():
    learner = registry.learner("maskdiff")
    spec = next(d for d in learner.deployments if d.function == "maskdiff_tfa_draws")
    values = {p.name: p.default for p in spec.params} | {"voc_root": "/voc", "data_seeds": "0-2,5"}
    overrides, flow_args = parameter_overrides(learner, spec, values)
    assert overrides == {"eval.split": "voc2012-val", "eval.voc_root": "/voc"}
    assert flow_args == {"data_seeds": [0, 1, 2, 5], "retries": 1}
    spec = next(d for d in learner.deployments if d.function == "train_maskdiff_fold")
    values = {p.name: p.default for p in spec.params} | {"dataset": "coco", "fold": 2, "synthetic_runs": [], "shots": 0}
    assert parameter_overrides(learner, spec, values)[0] == {
        "dataset.name": "coco",
        "dataset.fold": 2,
        "finetune.shots": 0,  # 0 is a value (the config refuses it), not "not given"
    }
