"""The `maskforge` command line: generate runs, browse shards, check datasets and models, train the toy models; the
learner and results command groups live in their own modules (hsnet_cli, gfss_cli, diffews_cli, maskdiff_cli,
results_cli), helpers they share in cli_support."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

# Prefect reads these at import: offline machines, and a 2-core machine needs a patient ephemeral API start.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# transformers' notes on resized embeddings (textual inversion adds tokens) are known and harmless: errors only.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402
from PIL import Image  # noqa: E402
from prefect.settings import PREFECT_HOME  # noqa: E402
from rich.table import Table  # noqa: E402

from maskforge.eval.coco_export import write_coco_json
from maskforge.eval.datasets import build_dataset
from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.check import check_layout, format_report
from maskforge.flows.cli_support import (
    check_out_file,
    check_out_folder,
    config_failure,
    log_to_file,
    non_empty_path,
    non_empty_text,
    save_image,
)
from maskforge.flows.console import console, fail
from maskforge.flows.diffews_cli import diffews_app
from maskforge.flows.ephemeral_api import survive_api_loss
from maskforge.flows.generate import generate_flow
from maskforge.flows.gfss_cli import gfss_app
from maskforge.flows.hsnet_cli import hsnet_app
from maskforge.flows.maskdiff_cli import maskdiff_app
from maskforge.flows.results_cli import results_app
from maskforge.flows.serve import serve as serve_all
from maskforge.models.loading import load_pipelines
from maskforge.models.tiny import build_tiny_models
from maskforge.models.toy_train import ground_diffusion, load_toy_train_config, train_controlnets, train_diffusion
from maskforge.storage.codec import ShardCodecError
from maskforge.storage.preview import render_preview
from maskforge.storage.reader import RunIncompleteError, RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.artifacts import MAX_SHEET_PER_SOURCE, MAX_SHEET_SIDE, contact_sheet_image
from maskforge.tasks.config import load_config
from maskforge.tasks.preflight import preflight

# Known and harmless: diffusers' rename of torch_dtype (every supported version reads it), controlnet-aux's timm
# registry and optional extras it does not need for HED.
for _message in ("`torch_dtype` is deprecated", "Overwriting tiny_vit", "The module 'mediapipe' is not installed"):
    warnings.filterwarnings("ignore", message=_message)

app = typer.Typer(
    help="maskforge: synthetic few-shot segmentation data, orchestrated with Prefect.", no_args_is_help=True
)
shards_app = typer.Typer(help="Browse the shards of a run.", no_args_is_help=True)
datasets_app = typer.Typer(help="Validate dataset layouts on disk.", no_args_is_help=True)
models_app = typer.Typer(help="Build or check the models the diffusion stage loads.", no_args_is_help=True)
app.add_typer(shards_app, name="shards")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(results_app, name="results")
app.add_typer(hsnet_app, name="hsnet")
app.add_typer(gfss_app, name="gfss")
app.add_typer(diffews_app, name="diffews")
app.add_typer(maskdiff_app, name="maskdiff")


#: Times `generate` resumes a run whose flow failed because the Prefect API was lost (completed parts are reused).
API_RESTARTS = 3


def summary_table(summary: dict) -> Table:
    """Return a rich table of samples per class and source (and rejected samples: OOD or empty) from a run summary."""
    sources = sorted({s for counts in summary["samples_per_class"].values() for s in counts})
    rejected = {
        name: n + (summary.get("empty_rejected") or {}).get(name, 0)
        for name, n in (summary.get("ood_rejected") or {}).items()
    }
    table = Table(title=f"{summary['dataset']} fold {summary['fold']}: {summary['n_samples']} samples")
    table.add_column("class", no_wrap=True)
    for s in sources:
        table.add_column(s, justify="right", no_wrap=True)
    if rejected:
        table.add_column("rejected", justify="right")
    table.add_column("real shots")
    for name, counts in summary["samples_per_class"].items():
        cells = [str(counts.get(s, 0)) for s in sources] + ([str(rejected.get(name, 0))] if rejected else [])
        table.add_row(name, *cells, ", ".join(summary["shots"][name]))
    return table


@app.command()
def generate(
    config: Path = typer.Argument(..., help="YAML config file (see configs/demo.yaml).", parser=non_empty_path),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of run folders (overrides run.out_dir)."),
    dask_workers: int = typer.Option(
        0, min=0, max=64, help="Fan classes out over a local Dask cluster of this many processes (0 to 64)."
    ),
    dask_address: Optional[str] = typer.Option(None, help="Fan out over an existing Dask scheduler (tcp://host:8786)."),
    dask_cluster_class: Optional[str] = typer.Option(
        None, help="Dask cluster class, e.g. dask_cuda.LocalCUDACluster (one worker per GPU)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Print Prefect's tracebacks here, not only to the log file."),
) -> None:
    """Run the generation flow on a config and print the run folder and its summary."""
    try:
        cfg = load_config(config, {"run.out_dir": out} if out is not None else None)
    except (ValueError, FileNotFoundError) as err:
        config_failure(err, config, load_config)
    try:
        preflight(cfg)  # before the Prefect server starts: a deterministic fault costs seconds and leaves no run folder
        flow = generate_flow(dask_workers, dask_address, dask_cluster_class)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    log_file = log_to_file(PREFECT_HOME.value() / "maskforge-logs", "generate", verbose)
    try:
        result = survive_api_loss(lambda: flow(config=cfg), API_RESTARTS, log=console.print)
    except (DatasetError, ValueError, FileNotFoundError, OSError) as err:
        fail(f"{err}{'' if verbose else f' (traceback in {log_file})'}")
    reader = RunReader(result["url"])
    console.print(summary_table(reader.summary))
    console.print(f"run folder: {result['url']}")


#: File name endings of the PNG files `shards show` and `shards sheet` write.
PNG = (".png",)

#: `--no-verify`: the explicit opt-out of checking each shard read against the sha256 its run's marker recorded.
NO_VERIFY_HELP = "Skip checking each shard read against the sha256 recorded in the run's completion marker."


def _open_run(run: str, partial: bool, verify: bool = True):
    """Return a RunReader of `run`, exiting with the reason when it is not a complete run."""
    try:
        return RunReader(run, allow_partial=partial, verify=verify)
    except RunIncompleteError as err:
        fail(str(err))


@shards_app.command("ls")
def shards_ls(
    run: str = typer.Argument(..., help="Run folder.", parser=non_empty_text),
    partial: bool = typer.Option(False, "--partial", help="Read a run without a valid completion marker."),
) -> None:
    """List a run's shards with their sample counts and sizes."""
    manifest = _open_run(run, partial).manifest.to_pylist()
    table = Table(title=f"{run}: {len(manifest)} samples")
    for col in ("shard", "samples", "classes", "sources"):
        table.add_column(col)
    for shard in sorted({row["shard"] for row in manifest}):
        rows = [r for r in manifest if r["shard"] == shard]
        table.add_row(
            shard,
            str(len(rows)),
            ", ".join(sorted({r["class_name"] for r in rows})),
            ", ".join(sorted({r["source"] for r in rows})),
        )
    console.print(table)


@shards_app.command("show")
def shards_show(
    run: str = typer.Argument(..., help="Run folder.", parser=non_empty_text),
    key: str = typer.Argument(..., help="Sample key (see the manifest or `shards ls`).", parser=non_empty_text),
    out: Path = typer.Option(
        ..., "--out", help="PNG file to write: the image with mask overlay and class legend.", parser=non_empty_path
    ),
    partial: bool = typer.Option(False, "--partial", help="Read a run without a valid completion marker."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
) -> None:
    """Write one sample as a PNG: image, coloured mask overlay and a legend of its classes."""
    check_out_file(out, PNG)
    try:
        sample = _open_run(run, partial, not no_verify).get(key)
    except (RunIncompleteError, ShardCodecError, KeyError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) else str(err))
    names = {int(c): n for c, n in sample.meta["class_names"].items()}
    save_image(render_preview(sample, names), out)


@shards_app.command("sheet")
def shards_sheet(
    run: str = typer.Argument(..., help="Run folder.", parser=non_empty_text),
    out: Path = typer.Option(
        ..., "--out", help="PNG file to write: a row per class, masks tinted.", parser=non_empty_path
    ),
    per_source: int = typer.Option(
        2, min=1, max=MAX_SHEET_PER_SOURCE, help=f"Samples per class and source (1 to {MAX_SHEET_PER_SOURCE})."
    ),
    side: int = typer.Option(
        128,
        min=16,
        max=MAX_SHEET_SIDE,
        help=f"Cell size in pixels, 16 to {MAX_SHEET_SIDE} (images are upscaled to fit).",
    ),
    partial: bool = typer.Option(False, "--partial", help="Read a run without a valid completion marker."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
) -> None:
    """Write the run's contact sheet as one PNG: class names left, source names above, masks tinted and outlined."""
    check_out_file(out, PNG)
    try:
        sheet = contact_sheet_image(_open_run(run, partial, not no_verify), per_source, side)
    except (RunIncompleteError, ValueError) as err:
        fail(str(err))
    save_image(Image.fromarray(sheet), out)


@datasets_app.command("check")
def datasets_check(
    root: str = typer.Argument(
        ..., help="Dataset root folder ('-' for the in-process toy dataset).", parser=non_empty_text
    ),
    dataset: str = typer.Option(..., "--dataset", help="pascal, coco, fss or toy."),
    coco_fold_mode: str = typer.Option("interleaved", help="COCO-20i folds: interleaved or contiguous."),
    sample: Optional[int] = typer.Option(
        None, "--sample", min=1, max=1_000_000, help="Decode only N images per split (default: every image)."
    ),
    fss_trainval: Optional[str] = typer.Option(
        None,
        "--fss-trainval",
        help="FSS-1000 trn/val classes: lists (HSNet's files) or derived (dataset.fss_trainval).",
    ),
) -> None:
    """Validate a dataset layout (every image and label decoded) and print image counts per class and per fold."""
    try:
        report = check_layout(
            dataset, None if root == "-" else root, coco_fold_mode, sample=sample, fss_trainval=fss_trainval
        )
    except DatasetError as err:
        fail(str(err))
    console.print(format_report(report), soft_wrap=True, markup=False, highlight=False)
    if report.problems:
        raise typer.Exit(code=1)


@datasets_app.command("coco-json")
def datasets_coco_json(
    root: str = typer.Argument(
        ..., help="Dataset root folder ('-' for the in-process toy dataset).", parser=non_empty_text
    ),
    dataset: str = typer.Option(..., "--dataset", help="A dataset with instances: coco or toy."),
    out: Path = typer.Option(..., "--out", help="COCO-format JSON file to write.", parser=non_empty_path),
    split: str = typer.Option("val", "--split", help="Split to export."),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1, max=10_000_000, help="Export only the split's first N images (sorted ids)."
    ),
) -> None:
    """Export a split's instances to a COCO-format JSON (pycocotools RLE), readable by pycocotools' COCO/COCOeval."""
    check_out_file(out, (".json",))
    try:
        ds = build_dataset(dataset, None if root == "-" else root)
        ids = ds.image_ids(split)[:limit] if limit else None
        summary = write_coco_json(ds, split, str(out), ids)
    except DatasetError as err:
        fail(str(err))
    console.print(
        f"wrote {summary['path']}: {summary['images']} images, {summary['annotations']} annotations", soft_wrap=True
    )
    if hasattr(ds, "skipped"):
        skipped = ds.skipped(split)
        console.print("skipped annotations: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))


@app.command()
def serve(
    port: int = typer.Option(4200, min=1, max=65535, help="Port of the Prefect server on 127.0.0.1."),
    timeout: float = typer.Option(180.0, min=1, max=3600, help="Seconds to wait for the server to become healthy."),
) -> None:
    """Start a local Prefect server (SQLite, loopback), the process work pool, every deployment and a worker."""
    try:
        serve_all(Path.cwd(), port, timeout, log=console.print)
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        fail(str(err))


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


# ---------------------------------------------------------------------------------------------------------------------
# Toy models (issue #8): `maskforge toy train-diffusion | train-controlnet`.
# ---------------------------------------------------------------------------------------------------------------------
toy_app = typer.Typer(help="Train the tiny toy-world generative models shipped in models/toy.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


def _toy_config(config: Path):

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
    entry = train_diffusion(_toy_config(config), out, log=console.print)
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
    try:
        entry = ground_diffusion(_toy_config(config), out, log=console.print)
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
    try:
        entries = train_controlnets(_toy_config(config), out, kind, log=console.print)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    for name, entry in entries.items():
        console.print(f"controlnet-{name}: {entry['seconds']} s, {entry['controlnet']}")
