"""Resumable training state of a long training loop: written every `every_s` seconds into the stage folder it trains,
read back by the rerun, so a stage cut short by Ctrl-C, SIGTERM or a kill continues from its last save.

A state file holds, at one finished step: the state dicts of the loop's modules, optimisers and schedulers, the
states of every random generator the loop draws from (torch's global generator, its own numpy and torch
generators), and the loop's JSON bookkeeping (losses so far, seconds). With all of them restored, the steps after a
resume draw exactly what an uninterrupted run draws, so the resumed model is the uninterrupted one (the tests assert
equal tensors). A loop whose data comes from DataLoader worker processes cannot rewind their streams; it says so
where it resumes (tasks/gfss/base.py).

The file is a torch file of tensors and plain containers, read with torch.load(weights_only=True) like every weight
file (models/weights_file.py): never pickled code. It is written atomically (temp name, rename), and it lives in
`<stage folder>/resume/`, which the stage removes once its final checkpoint is written. The stage folder's name is
the hash of what defines the model, so a state found there belongs to the same training, whatever the device or
thread count; its total step count is checked all the same.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from maskforge.models.weights_file import load_weights_only
from maskforge.storage.fs import atomic_write_bytes, exists, join, remove_tree

#: The folder of a stage's resumable states, removed when the stage completes.
RESUME_DIR = "resume"
#: Version of the state file's layout: a file of another version is refused, not misread.
STATE_VERSION = 1


class TrainStateError(ValueError):
    """A resumable state file that does not belong to the loop reading it (another step count, version or layout)."""


def _generator_state(gen: np.random.Generator | torch.Generator) -> Any:
    """The state of a numpy Generator (JSON text of its bit generator's state) or a torch Generator (a uint8 tensor)."""
    if isinstance(gen, np.random.Generator):
        return json.dumps(gen.bit_generator.state)
    return gen.get_state()


def _set_generator_state(gen: np.random.Generator | torch.Generator, state: Any) -> None:
    """Restore what _generator_state returned."""
    if isinstance(gen, np.random.Generator):
        gen.bit_generator.state = json.loads(state)
    else:
        gen.set_state(state)


@dataclass
class TrainState:
    """The resumable state of one training loop (`name`, e.g. "detector") of the stage folder `stage_dir`.

    objects: what has a state dict (modules, optimisers, LR schedulers), by name; generators: the numpy and torch
    generators the loop draws from, by name. torch's global generator is always included (dropout, torchvision's
    samplers and the diffusion noise of some loops draw from it). every_s 0 never saves.
    """

    stage_dir: str
    name: str
    total_steps: int
    objects: dict[str, Any]
    generators: dict[str, np.random.Generator | torch.Generator] = field(default_factory=dict)
    every_s: float = 600.0
    _last_save: float = field(default_factory=time.perf_counter, init=False, repr=False)

    @property
    def url(self) -> str:
        """The state file: STAGE_DIR/resume/NAME.pt."""
        return join(self.stage_dir, RESUME_DIR, f"{self.name}.pt")

    def restore(self) -> tuple[int, dict]:
        """Load the saved state into the objects and generators; return (finished steps, bookkeeping).

        Without a state file: (0, {}) and nothing changes. A file of another loop (step count, version, names) is a
        TrainStateError naming it and what differs.
        """
        if not exists(self.url):
            return 0, {}
        state = load_weights_only(self.url)
        problem = None
        if state.get("version") != STATE_VERSION:
            problem = f"layout version {state.get('version')}, expected {STATE_VERSION}"
        elif state.get("total_steps") != self.total_steps:
            problem = f"{state.get('total_steps')} total steps, this loop runs {self.total_steps}"
        elif set(state["objects"]) != set(self.objects) or set(state["generators"]) != set(self.generators):
            problem = f"state of {sorted(state['objects'])}, this loop holds {sorted(self.objects)}"
        if problem:
            raise TrainStateError(f"{self.url}: a resumable state of another training ({problem}); remove it")
        for key, obj in self.objects.items():
            obj.load_state_dict(state["objects"][key])
        for key, gen in self.generators.items():
            _set_generator_state(gen, state["generators"][key])
        torch.set_rng_state(state["torch_rng"])
        self._last_save = time.perf_counter()
        return int(state["step"]), json.loads(state["bookkeeping"])

    def due(self) -> bool:
        """Whether every_s seconds have passed since the last save (or restore, or the start)."""
        return self.every_s > 0 and time.perf_counter() - self._last_save >= self.every_s

    def save(self, step: int, bookkeeping: dict) -> None:
        """Write the state after `step` finished steps (atomically: a kill mid-write keeps the previous state)."""
        state = {
            "version": STATE_VERSION,
            "step": int(step),
            "total_steps": int(self.total_steps),
            "objects": {key: obj.state_dict() for key, obj in self.objects.items()},
            "generators": {key: _generator_state(gen) for key, gen in self.generators.items()},
            "torch_rng": torch.get_rng_state(),
            "bookkeeping": json.dumps(bookkeeping),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.url, buffer.getvalue())
        self._last_save = time.perf_counter()

    def maybe_save(self, step: int, bookkeeping: dict) -> bool:
        """Save when due() and the loop is not finished (its final weights go to the stage's checkpoint); return
        whether it saved."""
        if step >= self.total_steps or not self.due():
            return False
        self.save(step, bookkeeping)
        return True


def clear_resume_states(stage_dir: str) -> None:
    """Remove STAGE_DIR/resume/ (call it after the stage's completion marker is written: nothing resumes then)."""
    url = join(stage_dir, RESUME_DIR)
    if exists(url):
        remove_tree(url)
