"""What the CLI's command modules share: --out checks, config loading with the wrong-kind hint, option objects and
parsers, printing episodic results. Light on purpose: it imports no torch and no Prefect, so `--help`, usage and
config errors answer at once (flows/cli_run.py holds what running a flow needs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from maskforge.flows.console import console, fail
from maskforge.models.toy_train_config import load_toy_train_config
from maskforge.storage.fs import OutputLocationError, check_output_location
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import load_config
from maskforge.tasks.registry import learners

if TYPE_CHECKING:  # annotations only: PIL is imported by whoever makes the image
    from PIL import Image


def check_out_file(out: Path, suffixes: tuple[str, ...]) -> None:
    """Exit 1 before any work unless `out` can become a file of one of `suffixes`: not a folder, the right extension,
    its folder creatable and writable."""
    if out.is_dir():
        fail(f"--out {out}: is a folder; expected a file path ending in {' or '.join(suffixes)}")
    if out.suffix.lower() not in suffixes:
        fail(f"--out {out}: expected a file name ending in {' or '.join(suffixes)}")
    check_out_folder(out.parent)


def check_out_folder(out: Path) -> None:
    """Exit 1 before any work unless the folder `out` can be created or written in."""
    try:
        check_output_location(str(out), field="--out")
    except OutputLocationError as err:
        fail(str(err))


def save_image(image: Image.Image, out: Path) -> None:
    """Write an image to a checked --out path (its folder created); an OS error is one line."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
    except OSError as err:
        fail(f"--out {out}: cannot write ({err.strerror or err})")
    console.print(f"wrote {out}")


def config_kinds() -> tuple:
    """(kind, loader, command) of every config file kind, for the hint when a file is given to the wrong command."""
    return (
        ("generation", load_config, "maskforge generate"),
        *((one.title, one.config, one.commands_line()) for one in learners()),
        ("toy training", load_toy_train_config, "maskforge toy train-diffusion|ground|train-controlnet"),
    )


def config_failure(err: Exception, config: Path, loader) -> None:
    """Exit 1 with a config error; when the file validates as another kind of config, name the command it is for."""
    for kind, other, command in config_kinds():
        if other is loader:
            continue
        try:
            other(config)
        except (ConfigError, OSError):
            continue
        fail(f"{err}\n  {config} is a valid {kind} config: run it with `{command}`")
    fail(str(err))


def given(options: dict) -> dict:
    """Dotted-key overrides of the options given on the command line. Only None means "not given" (a repeatable
    option given no times is None too): 0 and "" are values the config validates, so `--shots 0` is an error."""
    return {key: value for key, value in options.items() if value is not None}


def learner_config(loader, config: Path, out: Optional[str], overrides: dict | None = None):
    """Load a learner's YAML config with `loader` (--out overriding run.out_dir, plus option overrides), or exit 1
    with the error."""
    more = given({"run.out_dir": out, **(overrides or {})})
    try:
        return loader(config, more or None)
    except ConfigError as err:
        config_failure(err, config, loader)


def non_empty_path(value: str | Path) -> Path:
    """typer parser of a path argument or option: an empty value is a usage error ('' would quietly be '.')."""
    if isinstance(value, Path):
        return value
    if not value.strip():
        raise typer.BadParameter("empty; expected a path")
    return Path(value)


def non_empty_text(value: str) -> str:
    """typer parser of a run folder, key or root: an empty value is a usage error, not a lookup of ''."""
    if not value.strip():
        raise typer.BadParameter("empty; expected a value")
    return value
