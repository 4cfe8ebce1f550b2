"""Functions with a signature made from data: what Prefect reads for a built flow's parameters and schema
(flows/learners.py, flows/deployments.py) and what typer reads for a built command's options (flows/learner_cli.py).
Light on purpose (the CLI imports it at start-up)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def signed(
    name: str, doc: str, parameters: list[inspect.Parameter], body: Callable[[dict], Any], returns: Any = dict
) -> Callable:
    """A function named `name` with the given signature and return annotation whose call binds its arguments and runs
    body({parameter: value}, defaults applied)."""
    signature = inspect.Signature(parameters, return_annotation=returns)

    def fn(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(dict(bound.arguments))

    fn.__signature__ = signature
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    fn.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": returns}
    return fn
