"""`maskforge models tiny|check` (the models the diffusion stage loads) and `maskforge toy train-diffusion|ground|
train-controlnet` (the tiny toy-world models shipped in models/toy).

Light at the top (no torch, no Prefect): `--help`, usage and config errors answer at once; model code is imported
when a command runs (LAZY in tests/test_layers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from maskforge.flows.cli_support import check_out_folder, config_failure, non_empty_path
from maskforge.flows.console import console, fail
from maskforge.models.toy_train_config import load_toy_train_config
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import load_config

models_app = typer.Typer(help="Build or check the models the diffusion stage loads.", no_args_is_help=True)


@models_app.command("tiny")
def models_tiny(
    out: Path = typer.Option(
        ..., "--out", help="Folder to write: sd/, controlnet-{mask,hed,scribble}/, hed/.", parser=non_empty_path
    ),
    seed: int = typer.Option(
        0, min=0, max=2**32 - 1, help="Initialisation seed, 0 to 2^32-1 (the same seed writes the same weights)."
    ),
) -> None:
    """Build tiny random-initialised SD, ControlNets and HED in their real formats (offline tests and demo)."""
    check_out_folder(out)
    from maskforge.models.tiny import build_tiny_models

    for name, folder in build_tiny_models(out, seed).items():
        console.print(f"{name}: {folder}")


@models_app.command("check")
def models_check(
    config: Path = typer.Argument(
        ..., help="YAML config whose diffusion section names the models.", parser=non_empty_path
    ),
) -> None:
    """Load every model a config's diffusion section names (no generation) and print ids and revisions."""
    try:
        cfg = load_config(config)
    except ConfigError as err:
        config_failure(err, config, load_config)
    if cfg.diffusion is None:
        fail(f"{config}: no 'diffusion' section; nothing to load")
    from maskforge.models.loading import load_pipelines

    try:
        pipes = load_pipelines(cfg.diffusion)
    except (FileNotFoundError, ValueError, OSError) as err:
        fail(str(err))
    table = Table(title=f"models on {pipes.device} ({str(pipes.dtype).removeprefix('torch.')})")
    for col in ("model", "id", "folder", "revision"):
        table.add_column(col)
    for name, ref in pipes.refs.items():
        table.add_row(name, ref.id, ref.folder, ref.revision)
    console.print(table)


toy_app = typer.Typer(help="Train the tiny toy-world generative models shipped in models/toy.", no_args_is_help=True)


def _toy_config(config: Path):
    """Load a toy training config, or exit 1 with the error (and the command a config of another kind is for)."""
    try:
        return load_toy_train_config(config)
    except ConfigError as err:
        config_failure(err, config, load_toy_train_config)


@toy_app.command("train-diffusion")
def toy_train_diffusion(
    config: Path = typer.Argument(..., help="Toy training YAML (see configs/toy-train.yaml).", parser=non_empty_path),
    out: Path = typer.Option(
        Path("models/toy"), "--out", help="Folder receiving sd/ and training.json.", parser=non_empty_path
    ),
) -> None:
    """Train the tiny text-to-image model (VAE, then UNet + text encoder) on the fold's base classes."""
    check_out_folder(out)  # before hours of training, not at the first write
    cfg = _toy_config(config)
    from maskforge.models.toy_train import train_diffusion

    entry = train_diffusion(cfg, out, log=console.print)
    console.print(f"wrote {out / 'sd'} in {entry['seconds']} s: {entry['vae']} {entry['diffusion']}", soft_wrap=True)


@toy_app.command("ground")
def toy_ground(
    config: Path = typer.Argument(
        ..., help="Toy training YAML (see configs/toy-train.yaml, section ground).", parser=non_empty_path
    ),
    out: Path = typer.Option(
        Path("models/toy"), "--out", help="Folder holding the trained sd/ (rewritten).", parser=non_empty_path
    ),
) -> None:
    """Fine-tune the toy SD with the cross-attention grounding loss, so the class word's map covers the object."""
    check_out_folder(out)
    cfg = _toy_config(config)
    from maskforge.models.toy_train import ground_diffusion

    try:
        entry = ground_diffusion(cfg, out, log=console.print)
    except FileNotFoundError as err:
        fail(str(err))
    console.print(f"rewrote {out / 'sd'} in {entry['seconds']} s: {entry['diffusion']}", soft_wrap=True)


@toy_app.command("train-controlnet")
def toy_train_controlnet(
    config: Path = typer.Argument(..., help="Toy training YAML (see configs/toy-train.yaml).", parser=non_empty_path),
    out: Path = typer.Option(
        Path("models/toy"), "--out", help="Folder holding sd/; receives controlnet-KIND/.", parser=non_empty_path
    ),
    kind: Optional[list[str]] = typer.Option(None, "--kind", help="Condition kind(s); default: controlnet.kinds."),
) -> None:
    """Train one ControlNet per condition kind on the trained toy SD in OUT/sd (UNet and text encoder frozen)."""
    check_out_folder(out)
    cfg = _toy_config(config)
    from maskforge.models.toy_train import train_controlnets

    try:
        entries = train_controlnets(cfg, out, kind, log=console.print)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    for name, entry in entries.items():
        console.print(f"controlnet-{name}: {entry['seconds']} s, {entry['controlnet']}")
