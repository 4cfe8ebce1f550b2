"""`maskforge <learner> load|train|eval|...`: every registered learner's command group (tasks/registry.py), built
from its declaration (tasks/learner.py: Command, Option, Inspect, SweepOption).

Every command works the same way: validate the config file (--out and the options as dotted-key overrides), run the
flow's pre-flight check before Prefect starts (a wrong input exits 1 on one line in seconds), run the flow with its
log in a file (flows/cli_run.py), print what the declaration's show(result) says. Declarations only at the top: the
flows, the stages and their modules are imported when a command runs, after its config validated, so `--help`, usage
and config errors never import torch or Prefect (tests/test_layers.py)."""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.table import Table

from maskforge.flows.cli_support import learner_config, non_empty_path
from maskforge.flows.console import console, fail, preflight
from maskforge.flows.signed import signed
from maskforge.tasks.learner import Command, Learner, Option, Shown

KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD


def print_shown(shown: Shown) -> None:
    """Print a command's Shown: the table (when rows), then the lines; exit 1 with its problem when it has one."""
    if shown.rows:
        table = Table(title=shown.title)
        for column in shown.rows[0]:
            table.add_column(column)
        for row in shown.rows:
            table.add_row(*row.values())
        console.print(table)
    for line in shown.lines:
        console.print(line, soft_wrap=True)
    if shown.problem is not None:
        fail(shown.problem)


def _dest(flag: str) -> str:
    """The Python name of an option's flag: --per-class -> per_class."""
    return flag.lstrip("-").replace("-", "_")


def _option_parameter(option: Option) -> inspect.Parameter:
    """A command parameter for a declared option (None when not given, so the config file's value stays)."""
    kind = Optional[list[option.kind]] if option.many else Optional[option.kind]
    return inspect.Parameter(
        _dest(option.flag), KEYWORD, default=typer.Option(None, option.flag, help=option.help), annotation=kind
    )


def _run_command(learner: Learner, command: Command) -> Callable:
    """The command running the declared flow on a config file, with the declared options (and the sweep's)."""
    parameters = [
        inspect.Parameter(
            "config",
            KEYWORD,
            default=typer.Argument(
                ..., help=f"{learner.title} YAML config (see configs/{learner.example}).", parser=non_empty_path
            ),
            annotation=Path,
        ),
        inspect.Parameter(
            "out", KEYWORD, default=typer.Option(None, "--out", help=learner.out_help), annotation=Optional[str]
        ),
        *(_option_parameter(option) for option in command.options),
    ]
    sweep = command.sweep
    if sweep is not None:
        parameters += [
            inspect.Parameter(
                _dest(sweep.flag),
                KEYWORD,
                default=typer.Option(None, sweep.flag, help=sweep.help),
                annotation=Optional[str],
            ),
            inspect.Parameter(
                "retries",
                KEYWORD,
                default=typer.Option(
                    1, "--retries", min=0, max=5, help=f"With {sweep.flag}: retries of a failed item."
                ),
                annotation=int,
            ),
        ]

    def body(values: dict) -> None:
        overrides = {option.key: values[_dest(option.flag)] for option in command.options}
        if sweep is not None and values[_dest(sweep.flag)] is not None:
            _run_sweep(learner, command, values, overrides)
            return
        cfg = learner_config(learner.config, values["config"], values["out"], overrides)
        check = learner.flow(command.flow).check
        if check:
            preflight(learner.check(check), cfg)
        from maskforge.flows.cli_run import run_flow
        from maskforge.flows.learners import learner_flow

        flow = learner_flow(command.flow)
        result = run_flow(flow, cfg, f"{learner.name}-{command.name}", learner.error_types())
        print_shown(learner.ref(command.show)(result))

    return signed(f"{learner.name}_{command.name.replace('-', '_')}", command.help, parameters, body, returns=None)


def _run_sweep(learner: Learner, command: Command, values: dict, overrides: dict) -> None:
    """The command's sweep (e.g. maskdiff eval --data-seeds): parse the items, validate the config, pre-flight the
    first item's config, run the sweep flow, print its report; exit 1 when an item failed (it is in the report)."""
    sweep = command.sweep
    try:
        items = learner.ref(sweep.parse)(values[_dest(sweep.flag)])
    except ValueError as err:
        fail(str(err))
    kept = {key: value for key, value in overrides.items() if key not in sweep.clear}
    cfg = learner_config(learner.config, values["config"], values["out"], kept)
    spec = learner.flow(sweep.flow).sweep
    preflight(learner.check(sweep.check), learner.ref(spec.configure)(cfg, items[0]))
    from maskforge.flows.cli_run import run_flow
    from maskforge.flows.learners import learner_flow

    flow = partial(learner_flow(sweep.flow), **{spec.param: items, "retries": values["retries"]})
    report = run_flow(flow, cfg, sweep.flow.replace("_", "-"), learner.error_types())
    print_shown(learner.ref(sweep.show)(report, cfg))


def _load_command(learner: Learner) -> Callable:
    """The learner's `load` command: check a checkpoint strictly and print what it holds (exit 1 on a problem)."""
    parameters = [
        inspect.Parameter(
            "checkpoint",
            KEYWORD,
            default=typer.Argument(..., help=learner.load.arg_help, parser=non_empty_path),
            annotation=Path,
        )
    ]

    def body(values: dict) -> None:
        print_shown(learner.ref(learner.load.fn)(values["checkpoint"]))

    return signed(f"{learner.name}_load", learner.load.help, parameters, body, returns=None)


def learner_app(learner: Learner) -> typer.Typer:
    """The command group of a learner: `load` when it declares one, then its commands."""
    app = typer.Typer(help=learner.help, no_args_is_help=True)
    if learner.load is not None:
        app.command("load")(_load_command(learner))
    for command in learner.commands:
        app.command(command.name)(_run_command(learner, command))
    return app
