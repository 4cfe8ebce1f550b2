"""The learner registry: one line per learner, naming the module that declares it (tasks/<name>/learner.py:LEARNER,
the protocol of tasks/learner.py). Its Prefect tasks (tasks/wrappers.py), flows (flows/learners.py), CLI group
(flows/learner_cli.py) and deployment entry points (flows/deployments.py) are built from here, so a new learner is its
own models/<name>/ and tasks/<name>/ folders plus one line below."""

from __future__ import annotations

import importlib
from functools import cache

from maskforge.tasks.learner import Flow, Learner

#: CLI group name -> the module declaring the learner (its LEARNER), in the order the CLI lists them.
LEARNERS = {
    "hsnet": "maskforge.tasks.hsnet.learner",
    "gfss": "maskforge.tasks.gfss.learner",
    "diffews": "maskforge.tasks.diffews.learner",
    "maskdiff": "maskforge.tasks.maskdiff.learner",
}


@cache
def learners() -> tuple[Learner, ...]:
    """Every registered learner's declaration, in registry order; a declaration whose name is not its registry key
    is an error (the name is its CLI group, task and artifact prefix)."""
    found = []
    for name, module in LEARNERS.items():
        learner = importlib.import_module(module).LEARNER
        if learner.name != name:
            raise ValueError(
                f"{module}: LEARNER.name is {learner.name!r}; the registry (tasks/registry.py) says {name!r}"
            )
        found.append(learner)
    return tuple(found)


def learner(name: str) -> Learner:
    """The declaration of the learner `name`; a KeyError names the registered ones."""
    for one in learners():
        if one.name == name:
            return one
    raise KeyError(f"no learner {name!r}; registered: {', '.join(LEARNERS)}")


def owner_of(flow_name: str) -> tuple[Learner, Flow]:
    """The learner declaring the flow `flow_name`, and the flow; a KeyError when none does."""
    for one in learners():
        for spec in one.flows:
            if spec.name == flow_name:
                return one, spec
    raise KeyError(f"no learner declares a flow {flow_name!r}")
