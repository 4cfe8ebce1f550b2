"""What the CLI's command modules share: --out checks, config loading with the wrong-kind hint, option objects and
parsers, printing episodic results. Light on purpose: it imports no torch and no Prefect, so `--help`, usage and
config errors answer at once (flows/cli_run.py holds what running a flow needs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from maskforge.flows.console import console, fail
from maskforge.models.toy_train_config import load_toy_train_config
from maskforge.storage.fs import OutputLocationError, check_output_location
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import load_config
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.hsnet.config import load_hsnet_config
from maskforge.tasks.maskdiff.config import load_maskdiff_config

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
        ("HSNet", load_hsnet_config, "maskforge hsnet train|eval"),
        ("GFSS", load_gfss_config, "maskforge gfss train-base|train-novel|eval"),
        ("DiffewS", load_diffews_config, "maskforge diffews train|eval"),
        ("MaskDiff", load_maskdiff_config, "maskforge maskdiff train|eval"),
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


def print_episodes(model: str, result: dict) -> None:
    """Print an episodic evaluation (HSNet, DiffewS): a row per setting and baseline, then the table file."""
    title = f"{model} on {result['dataset']} fold {result['fold']}: {result['episodes']} episodes"
    table = Table(title=title)
    for col in ("setting", "mIoU %", "FB-IoU %"):
        table.add_column(col)
    rows = list(result["settings"].items()) + [(f"baseline: {k}", v) for k, v in result["baselines"].items()]
    for name, summary in rows:
        table.add_row(name, f"{100 * summary['miou']:.2f}", f"{100 * summary['fb_iou']:.2f}")
    console.print(table)
    console.print(f"benchmark rows: {result['table_file']}", soft_wrap=True)


# The episodic evaluations' options (HSNet and DiffewS take the same four; typer reads an option object afresh for
# every command that names it).
SHOTS_OPTION = typer.Option(None, "--shots", help="Real supports per episode (overrides eval.shots).")
SYNTHETIC_OPTION = typer.Option(
    None, "--synthetic", help="A maskforge run of the novel classes: adds the KR+NS setting (eval.synthetic_run)."
)
PER_CLASS_OPTION = typer.Option(
    None, "--per-class", help="N, generated supports added per episode (eval.synthetic_per_class)."
)


def episode_overrides(
    shots: Optional[int], synthetic: Optional[str], per_class: Optional[int], checkpoint: Optional[str]
) -> dict:
    """Dotted-key overrides of an episodic evaluation's options (the given ones only)."""
    return given(
        {
            "eval.shots": shots,
            "eval.synthetic_run": synthetic,
            "eval.synthetic_per_class": per_class,
            "eval.checkpoint": checkpoint,
        }
    )


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
