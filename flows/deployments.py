"""Deployment entry points: the generate flow, and every registered learner's (built from its declaration's
deployments, tasks/learner.py:Deployment), parameterised by config file, dataset and fold (TFA's split has none).
prefect.yaml names them as flows/deployments.py:FUNCTION; Prefect imports this module and takes the attribute."""

from __future__ import annotations

import inspect

from prefect import flow

from maskforge.flows.generate import generate_flow
from maskforge.flows.learners import learner_flow
from maskforge.flows.signed import signed
from maskforge.tasks.config import load_config
from maskforge.tasks.learner import Deployment, Learner
from maskforge.tasks.registry import learners


def _overrides(dataset: str, fold: int, root: str | None, **more) -> dict:
    """Return dotted-key overrides of a config file from deployment parameters (None leaves the file's value)."""
    out = {"dataset.name": dataset, "dataset.fold": fold, **{k: v for k, v in more.items() if v is not None}}
    if root is not None:
        out["dataset.root"] = root
    return out


@flow(name="generate-fold", log_prints=True)
def generate_fold(
    config_path: str,
    dataset: str,
    fold: int,
    shots: int | None = None,
    root: str | None = None,
    out_dir: str | None = None,
    dask_workers: int = 0,
    dask_address: str | None = None,
    dask_cluster_class: str | None = None,
    round: int | str | None = None,
) -> dict:
    """Generate one (dataset, fold) from a config file, overriding its dataset, fold, root, shots and out_dir; the Dask
    parameters fan the classes out (a local cluster, an existing scheduler, or e.g. dask_cuda.LocalCUDACluster).
    round: a number, or "scheduled" (the nightly deployments): the flow run's scheduled date as YYYYMMDD, so each
    night renders a new round and a retry of the same night's run is the same run."""
    more = {"shots.k": shots, "run.out_dir": out_dir, "run.round": scheduled_round(round)}
    config = load_config(config_path, _overrides(dataset, fold, root, **more))
    return generate_flow(dask_workers, dask_address, dask_cluster_class)(config=config)


def scheduled_round(round: int | str | None) -> int | None:
    """Resolve generate_fold's round: None (the config's), a number, or "scheduled": the UTC date of this flow run's
    scheduled start as YYYYMMDD (a manual run's start is its schedule)."""
    if round is None or isinstance(round, int):
        return round
    if str(round).isdigit():
        return int(round)
    if round != "scheduled":
        raise ValueError(f"round: expected a number or 'scheduled', got {round!r}")
    from datetime import timezone

    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time  # a datetime subclass (pendulum's or whenever's by Python version)
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    return int(when.strftime("%Y%m%d"))


def parameter_overrides(learner: Learner, spec: Deployment, values: dict) -> tuple[dict, dict]:
    """Return (dotted-key config overrides, flow arguments) of a learner deployment's parameter values. A value that
    is None or an empty list leaves the config file's value; `append` parameters join the list at their key after
    the others; `to` parameters give their own overrides; flow arguments go to the flow (converted when declared)."""
    overrides: dict = {}
    flow_args: dict = {}
    for param in spec.params:
        value = values[param.name]
        if param.flow_arg:
            flow_args[param.name] = learner.ref(param.convert)(value) if param.convert else value
        elif param.key is None and param.to is None:
            continue  # a switch of `choose`: it picks the flow, it sets no key
        elif value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        elif param.to is not None:
            overrides.update(param.to(value))
        elif param.append:
            overrides[param.key] = [*(overrides.get(param.key) or []), value]
        else:
            overrides[param.key] = list(value) if isinstance(value, (list, tuple)) else value
    return overrides, flow_args


def entrypoint(learner: Learner, spec: Deployment):
    """The deployment entry point of a learner's Deployment: a flow named spec.flow_name taking config_path and the
    declared parameters, loading the config file with their overrides and running the declared flow (or the first
    `choose` flow whose switch parameter has its value)."""

    def run(values: dict) -> dict:
        overrides, flow_args = parameter_overrides(learner, spec, values)
        runs = next((flow for name, value, flow in spec.choose if values[name] == value), spec.runs)
        return learner_flow(runs)(config=learner.config(values["config_path"], overrides), **flow_args)

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("config_path", keyword, annotation=str)] + [
        inspect.Parameter(p.name, keyword, default=p.default, annotation=p.annotation) for p in spec.params
    ]
    return flow(name=spec.flow_name, log_prints=True)(signed(spec.function, spec.doc, parameters, run))


#: The learners' entry points, by function name (prefect.yaml: flows/deployments.py:train_hsnet_fold, ...).
ENTRYPOINTS = {spec.function: entrypoint(one, spec) for one in learners() for spec in one.deployments}
globals().update(ENTRYPOINTS)
