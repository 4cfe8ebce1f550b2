"""Every learner's flows, built from its declaration (tasks/<name>/learner.py, the protocol of tasks/learner.py) and
the registry (tasks/registry.py): a flow runs its pre-flight check as the first task, then its stages (one coarse
task each, tasks/wrappers.py:stage_task) or other flows of the learner, and records an evaluation's rows. Flows only
wire: no learner-specific code here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

from prefect import Flow, flow

from maskforge.flows.signed import signed
from maskforge.tasks.learner import Flow as FlowSpec
from maskforge.tasks.learner import Learner
from maskforge.tasks.registry import learner as registered
from maskforge.tasks.registry import owner_of
from maskforge.tasks.wrappers import check_task, record_task, stage_task


@cache
def learner_flows(name: str) -> dict[str, Flow]:
    """{flow name: Prefect flow} of the learner `name`, built in declaration order (a flow made of other flows
    declares them first)."""
    learner = registered(name)
    built: dict[str, Flow] = {}
    for spec in learner.flows:
        built[spec.name] = _sweep_flow(learner, spec, built) if spec.sweep else _steps_flow(learner, spec, built)
    return built


def learner_flow(flow_name: str) -> Flow:
    """The Prefect flow `flow_name` of whichever learner declares it (e.g. "eval_hsnet")."""
    learner, _ = owner_of(flow_name)
    return learner_flows(learner.name)[flow_name]


def _log(learner: Learner, log: str | Callable | None, report: Any) -> None:
    """Print a stage's log line(s) (a function or a reference to one) into the flow run's log."""
    if log is not None:
        print((learner.ref(log) if isinstance(log, str) else log)(report))


def _config_parameter(learner: Learner) -> inspect.Parameter:
    """A learner flow's first parameter: the validated config object of its config class."""
    return inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=learner.config_class)


def _steps_flow(learner: Learner, spec: FlowSpec, built: dict[str, Flow]) -> Flow:
    """A flow of pre-flight, steps (stages or earlier flows of the learner) and, for an evaluation, its record."""
    unknown = [s for s in spec.steps if s not in learner.stages and s not in built]
    if unknown:
        raise ValueError(f"{learner.name}: flow {spec.name} has steps {unknown} that are neither stages nor flows")

    def run(values: dict) -> dict:
        config = values["config"]
        if spec.check:  # pre-flight first: a deployment's wrong input fails in seconds, on one line
            check_task(learner.name, spec.check)(config)
        results = []
        for step in spec.steps:
            if step in learner.stages:
                results.append(stage_task(learner.name, step)(config))
                _log(learner, learner.stages[step].log, results[-1])
            else:
                results.append(built[step](config))
        if spec.keys:
            return dict(zip(spec.keys, results))
        result = results[-1]
        if spec.record:
            recorded = record_task(learner.name)(config, result)
            print(f"benchmark rows: {recorded['table_file']}")
            result = {**result, "table_file": recorded["table_file"]}
        return result

    fn = signed(spec.name, spec.doc, [_config_parameter(learner)], run)
    return flow(name=spec.name, log_prints=True)(fn)


def _sweep_flow(learner: Learner, spec: FlowSpec, built: dict[str, Flow]) -> Flow:
    """A flow running another flow of the learner once per item (e.g. MaskDiff's data seeds), with retries; the
    report is written by the sweep's stage and its location returned under the sweep's file_key."""
    sweep = spec.sweep
    configure, run_all, caption = (learner.ref(r) for r in (sweep.configure, sweep.run, sweep.caption))

    def run(values: dict) -> dict:
        config, retries = values["config"], values["retries"]
        inner = built[sweep.flow]  # looked up when it runs, as steps are
        report = run_all(values[sweep.param], lambda item: inner(configure(config, item)), retries, print)
        url = stage_task(learner.name, sweep.write)(config, report)
        print(caption(report, config))
        print(f"report: {url}")
        return {**report, sweep.file_key: url}

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        _config_parameter(learner),
        inspect.Parameter(sweep.param, keyword, annotation=list[int]),
        inspect.Parameter("retries", keyword, default=1, annotation=int),
    ]
    return flow(name=spec.name, log_prints=True)(signed(spec.name, spec.doc, parameters, run))
