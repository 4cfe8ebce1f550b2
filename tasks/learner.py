"""The learner protocol: what a learner declares (tasks/<name>/learner.py) so that its Prefect tasks
(tasks/wrappers.py), flows (flows/learners.py), CLI group (flows/learner_cli.py) and deployment entry points
(flows/deployments.py) are built from one registry (tasks/registry.py), the same way for every learner.

A declaration is data and light on purpose: the command line imports every learner's declaration at start-up, so it
names its heavy functions (training loops, evaluations, checkpoint loaders: torch) by reference, "module:attribute",
relative to the learner's package when it starts with a dot, imported only when a stage runs (`resolve`)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: A deployment parameter without a default (Prefect shows it as required).
REQUIRED = inspect.Parameter.empty


def resolve(package: str, ref: str) -> Any:
    """Import what `ref` names: "module:attribute", the module relative to `package` when it starts with a dot."""
    module, _, attribute = ref.partition(":")
    if not attribute:
        raise ValueError(f"learner reference {ref!r}: expected 'module:attribute'")
    if module.startswith("."):
        module = package + module
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Stage:
    """One coarse stage: a pure function fn(config) -> dict run as one Prefect task (`task`) holding the GPU slot;
    `log` gives the line(s) the flow prints from its report (a function, or a reference to one). A stage with
    gpu=False (writing a report) is fn(config, *inputs) and holds no slot."""

    fn: str
    task: str
    doc: str
    log: str | Callable[[dict], str] | None = None
    gpu: bool = True


@dataclass(frozen=True)
class Sweep:
    """A flow that runs another flow of the learner once per item of a list parameter (`param`), each on
    configure(config, item), through run(items, one, retries, print) (a retrying loop that reports failures), then
    writes the report with the stage `write` (its location returned under `file_key`) and prints caption(report,
    config)."""

    param: str
    flow: str
    configure: str
    run: str
    write: str
    caption: str
    file_key: str


@dataclass(frozen=True)
class Flow:
    """A flow of the learner: its pre-flight `check` (a function of the learner's preflight module) as the first task,
    then `steps` in order, each a stage key or the name of another flow of the learner. `record` appends the last
    step's result to the benchmark table (the learner's `record`); `keys` returns every step's result by those keys
    instead of the last one; a `sweep` flow takes the extra parameters `sweep.param` and `retries`."""

    name: str
    doc: str
    steps: tuple[str, ...] = ()
    check: str | None = None
    record: bool = False
    keys: tuple[str, ...] | None = None
    sweep: Sweep | None = None


@dataclass(frozen=True)
class Record:
    """What an evaluation appends and publishes: its benchmark rows, the table artifact (key, rows, description) and
    the trend artifact (key and trend(table, dataset, fold, shots) -> markdown)."""

    rows: list[dict]
    table_key: str
    table: list[dict]
    about: str
    trend_key: str
    trend: Callable[..., str]


@dataclass(frozen=True)
class Shown:
    """What a command prints of a result: a table (title, rows of {column: text}) when rows, then the lines; `problem`
    makes the command exit 1 with that line after printing."""

    lines: tuple[str, ...] = ()
    title: str = ""
    rows: tuple[dict, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class Option:
    """A command-line option that overrides a dotted config key (`many`: repeatable, a list)."""

    flag: str
    key: str
    kind: type
    help: str
    many: bool = False


@dataclass(frozen=True)
class SweepOption:
    """An option that turns a command into the learner's sweep flow over the items it parses (`parse`, a reference
    raising ValueError), with `--retries`; `check` (a preflight function) runs on the first item's config first,
    `show(report, config)` (a reference) is what it prints, and `clear` names the option keys the sweep sets itself."""

    flag: str
    help: str
    flow: str
    parse: str
    check: str
    show: str
    clear: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """A command of the learner's CLI group: run `flow` on the config file (after the flow's pre-flight, before
    Prefect starts) with the options' overrides, then print show(result) (a reference to a function -> Shown)."""

    name: str
    flow: str
    help: str
    show: str
    options: tuple[Option, ...] = ()
    sweep: SweepOption | None = None


@dataclass(frozen=True)
class Inspect:
    """The learner's `load` command: check a checkpoint given as a path with fn(path) -> Shown (a reference)."""

    fn: str
    arg_help: str
    help: str


@dataclass(frozen=True)
class Param:
    """A deployment parameter: its name, annotation and default, and what it does. `key`: the dotted config key it
    overrides when not None (`append`: it joins the list at that key); `to`: a function of the value returning the
    overrides; `flow_arg`: passed to the flow itself (converted by `convert`, a reference, when given)."""

    name: str
    annotation: Any
    default: Any = None
    key: str | None = None
    append: bool = False
    to: Callable[[Any], dict] | None = None
    flow_arg: bool = False
    convert: str | None = None


#: The parameters every per-fold deployment entry point takes (dataset and fold required; root optional).
DATASET = Param("dataset", str, REQUIRED, key="dataset.name")
FOLD = Param("fold", int, REQUIRED, key="dataset.fold")
ROOT = Param("root", str | None, None, key="dataset.root")


@dataclass(frozen=True)
class Deployment:
    """A deployment entry point of flows/deployments.py: the flow `function` (Prefect flow name `flow_name`) of
    (config_path, *params) that loads the config file with the parameters' overrides and runs the learner's flow
    `runs`, or the flow of the first (parameter, value, flow) of `choose` whose parameter has that value (switches
    such as evaluate: false -> train only)."""

    function: str
    flow_name: str
    doc: str
    runs: str
    params: tuple[Param, ...]
    choose: tuple[tuple[str, Any, str], ...] = ()


@dataclass(frozen=True)
class Learner:
    """A learner behind the one interface. name: its CLI group and the prefix of its task and artifact names; title:
    how tables name it; config: its YAML config loader (config files take run selectors in the config class's
    RUN_FIELDS: how it takes synthetic runs); protocol: the benchmark protocol its rows are scored by
    (storage/results.py); stages, flows, record (a reference to record(config, result) -> Record), errors (references
    to the exception classes its commands report on one line), commands, load, deployments; chain: the deployment
    entry point the nightly chain triggers on a new run, which takes it as `synthetic_run` (docs/operations.md)."""

    name: str
    title: str
    help: str
    package: str
    config: Callable[..., Any]
    config_class: type
    example: str
    protocol: str
    stages: dict[str, Stage]
    flows: tuple[Flow, ...]
    record: str
    commands: tuple[Command, ...]
    deployments: tuple[Deployment, ...] = ()
    chain: str | None = None
    load: Inspect | None = None
    errors: tuple[str, ...] = ()
    out_help: str = "Parent folder of training runs (overrides run.out_dir)."

    def ref(self, ref: str) -> Any:
        """Import a reference of this declaration (relative ones to the learner's package)."""
        return resolve(self.package, ref)

    def flow(self, name: str) -> Flow:
        """The flow `name` of this learner; a KeyError names the known ones."""
        for spec in self.flows:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name}: no flow {name!r}; known: {', '.join(f.name for f in self.flows)}")

    def check(self, name: str) -> Callable[[Any], Any]:
        """The pre-flight function `name` of the learner's preflight module."""
        return self.ref(f".preflight:{name}")

    def error_types(self) -> tuple[type[BaseException], ...]:
        """The exception classes its commands report on one line."""
        return tuple(self.ref(ref) for ref in self.errors)

    def run_fields(self) -> tuple[str, ...]:
        """The dotted config keys that take synthetic runs (run folders, URLs or catalogue selectors)."""
        return tuple(f"{section}.{name}" for section, name in self.config_class.RUN_FIELDS)

    def commands_line(self) -> str:
        """How its commands are run, for the hint given when a config file goes to the wrong command."""
        return f"maskforge {self.name} {'|'.join(c.name for c in self.commands)}"


def show_training(report: dict) -> Shown:
    """What a training command prints: steps, seconds and final loss, then the checkpoint."""
    return Shown(
        (
            f"trained {report['steps']} steps in {report['seconds']} s; final loss {report['losses'][-1]:.4f}",
            f"checkpoint: {report['checkpoint']}",
        )
    )


def table_of(title: str, rows: list[dict], *lines: str) -> Shown:
    """A Shown of a table whose cells are printed as text, then `lines`."""
    return Shown(tuple(lines), title, tuple({k: str(v) for k, v in row.items()} for row in rows))
