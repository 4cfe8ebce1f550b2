"""The `maskforge` command line: generate runs, browse shards, check dataset layouts."""

from __future__ import annotations

import logging
import os
import time
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
from prefect.logging.handlers import PrefectConsoleHandler  # noqa: E402
from prefect.settings import PREFECT_HOME  # noqa: E402
from rich.table import Table  # noqa: E402

from maskforge.eval.coco_export import write_coco_json
from maskforge.eval.datasets import build_dataset
from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.check import check_layout, format_report
from maskforge.flows import diffews as diffews_flows
from maskforge.flows import gfss as gfss_flows
from maskforge.flows import maskdiff as maskdiff_flows
from maskforge.flows.console import console, fail
from maskforge.flows.ephemeral_api import survive_api_loss
from maskforge.flows.generate import generate_flow
from maskforge.flows.hsnet import eval_hsnet, train_hsnet
from maskforge.flows.results_cli import results_app
from maskforge.flows.serve import serve as serve_all
from maskforge.models.diffews.checkpoint import DiffewsCheckpointError
from maskforge.models.diffews.checkpoint import key_report as diffews_key_report
from maskforge.models.diffews.network import DiffewsModelError
from maskforge.models.gfss.checkpoint import GfssCheckpointError, authors_key_report, load_gfss
from maskforge.models.gfss.network import GfssModelError
from maskforge.models.hsnet.checkpoint import CheckpointError, inspect_checkpoint
from maskforge.models.hsnet.model import learnable_parameters
from maskforge.models.loading import ModelLoadError, load_pipelines
from maskforge.models.tiny import build_tiny_models
from maskforge.models.toy_train import ground_diffusion, load_toy_train_config, train_controlnets, train_diffusion
from maskforge.storage.codec import ShardCodecError
from maskforge.storage.fs import OutputLocationError, check_output_location
from maskforge.storage.marked_folder import COMPLETE as DIFFEWS_COMPLETE
from maskforge.storage.preview import render_preview
from maskforge.storage.reader import RunIncompleteError, RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.artifacts import MAX_SHEET_PER_SOURCE, MAX_SHEET_SIDE, contact_sheet_image
from maskforge.tasks.config import load_config
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.gfss.evaluate import summary_table as gfss_summary_table
from maskforge.tasks.hsnet.config import load_hsnet_config
from maskforge.tasks.maskdiff.config import load_maskdiff_config
from maskforge.tasks.maskdiff.evaluate import summary_table as maskdiff_summary_table
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


class _NoTraceback(logging.Formatter):
    """Formats a record as another formatter would, without its traceback (that goes to the log file)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """Format a copy of the record without exception info."""
        bare = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(bare)


def log_to_file(folder: Path, command: str, verbose: bool) -> Path:
    """Send Prefect's full log (tracebacks included) to FOLDER/COMMAND-TIME.log and, unless verbose, keep tracebacks
    off the console; return the log file."""
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / f"{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("prefect").addHandler(handler)
    if not verbose:
        loggers = [logging.getLogger()] + [
            logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
        ]
        for logger in loggers:
            for console_handler in logger.handlers:
                if isinstance(console_handler, PrefectConsoleHandler) and not isinstance(
                    console_handler.formatter, _NoTraceback
                ):
                    console_handler.setFormatter(_NoTraceback(console_handler.formatter))
    return log_file


#: Times `generate` resumes a run whose flow failed because the Prefect API was lost (completed parts are reused).
API_RESTARTS = 3


def _check_out_file(out: Path, suffixes: tuple[str, ...]) -> None:
    """Exit 1 before any work unless `out` can become a file of one of `suffixes`: not a folder, the right extension,
    its folder creatable and writable."""
    if out.is_dir():
        fail(f"--out {out}: is a folder; expected a file path ending in {' or '.join(suffixes)}")
    if out.suffix.lower() not in suffixes:
        fail(f"--out {out}: expected a file name ending in {' or '.join(suffixes)}")
    _check_out_folder(out.parent)


def _check_out_folder(out: Path) -> None:
    """Exit 1 before any work unless the folder `out` can be created or written in."""
    try:
        check_output_location(str(out), field="--out")
    except OutputLocationError as err:
        fail(str(err))


def _save_image(image: Image.Image, out: Path) -> None:
    """Write an image to a checked --out path (its folder created); an OS error is one line."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
    except OSError as err:
        fail(f"--out {out}: cannot write ({err.strerror or err})")
    console.print(f"wrote {out}")


def _config_kinds() -> tuple:
    """(kind, loader, command) of every config file kind, for the hint when a file is given to the wrong command."""
    return (
        ("generation", load_config, "maskforge generate"),
        ("HSNet", load_hsnet_config, "maskforge hsnet train|eval"),
        ("GFSS", load_gfss_config, "maskforge gfss train-base|train-novel|eval"),
        ("DiffewS", load_diffews_config, "maskforge diffews train|eval"),
        ("MaskDiff", load_maskdiff_config, "maskforge maskdiff train|eval"),
        ("toy training", load_toy_train_config, "maskforge toy train-diffusion|ground|train-controlnet"),
    )


def _config_failure(err: Exception, config: Path, loader) -> None:
    """Exit 1 with a config error; when the file validates as another kind of config, name the command it is for."""
    for kind, other, command in _config_kinds():
        if other is loader:
            continue
        try:
            other(config)
        except (ConfigError, OSError):
            continue
        fail(f"{err}\n  {config} is a valid {kind} config: run it with `{command}`")
    fail(str(err))


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
    config: Path = typer.Argument(..., help="YAML config file (see configs/demo.yaml)."),
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
        _config_failure(err, config, load_config)
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
    run: str = typer.Argument(..., help="Run folder."),
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
    run: str = typer.Argument(..., help="Run folder."),
    key: str = typer.Argument(..., help="Sample key (see the manifest or `shards ls`)."),
    out: Path = typer.Option(..., "--out", help="PNG file to write: the image with mask overlay and class legend."),
    partial: bool = typer.Option(False, "--partial", help="Read a run without a valid completion marker."),
    no_verify: bool = typer.Option(False, "--no-verify", help=NO_VERIFY_HELP),
) -> None:
    """Write one sample as a PNG: image, coloured mask overlay and a legend of its classes."""
    _check_out_file(out, PNG)
    try:
        sample = _open_run(run, partial, not no_verify).get(key)
    except (RunIncompleteError, ShardCodecError, KeyError) as err:
        fail(str(err.args[0]) if isinstance(err, KeyError) else str(err))
    names = {int(c): n for c, n in sample.meta["class_names"].items()}
    _save_image(render_preview(sample, names), out)


@shards_app.command("sheet")
def shards_sheet(
    run: str = typer.Argument(..., help="Run folder."),
    out: Path = typer.Option(..., "--out", help="PNG file to write: a row per class, masks tinted."),
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
    _check_out_file(out, PNG)
    try:
        sheet = contact_sheet_image(_open_run(run, partial, not no_verify), per_source, side)
    except (RunIncompleteError, ValueError) as err:
        fail(str(err))
    _save_image(Image.fromarray(sheet), out)


@datasets_app.command("check")
def datasets_check(
    root: str = typer.Argument(..., help="Dataset root folder ('-' for the in-process toy dataset)."),
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
    root: str = typer.Argument(..., help="Dataset root folder ('-' for the in-process toy dataset)."),
    dataset: str = typer.Option(..., "--dataset", help="A dataset with instances: coco or toy."),
    out: Path = typer.Option(..., "--out", help="COCO-format JSON file to write."),
    split: str = typer.Option("val", "--split", help="Split to export."),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1, max=10_000_000, help="Export only the split's first N images (sorted ids)."
    ),
) -> None:
    """Export a split's instances to a COCO-format JSON (pycocotools RLE), readable by pycocotools' COCO/COCOeval."""
    _check_out_file(out, (".json",))
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
    out: Path = typer.Option(..., "--out", help="Folder to write: sd/, controlnet-{mask,hed,scribble}/, hed/."),
    seed: int = typer.Option(
        0, min=0, max=2**32 - 1, help="Initialisation seed, 0 to 2^32-1 (the same seed writes the same weights)."
    ),
) -> None:
    """Build tiny random-initialised SD, ControlNets and HED in their real formats (offline tests and demo)."""
    _check_out_folder(out)
    for name, folder in build_tiny_models(out, seed).items():
        console.print(f"{name}: {folder}")


@models_app.command("check")
def models_check(
    config: Path = typer.Argument(..., help="YAML config whose diffusion section names the models."),
) -> None:
    """Load every model a config's diffusion section names (no generation) and print ids and revisions."""
    try:
        cfg = load_config(config)
    except ConfigError as err:
        _config_failure(err, config, load_config)
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
# HSNet (issue #5): `maskforge hsnet load | train | eval`. Kept in one block to ease merging.
# ---------------------------------------------------------------------------------------------------------------------
hsnet_app = typer.Typer(help="HSNet few-shot segmenter: load checkpoints, train, evaluate.", no_args_is_help=True)
app.add_typer(hsnet_app, name="hsnet")


def _given(options: dict) -> dict:
    """Dotted-key overrides of the options given on the command line. Only None means "not given" (a repeatable
    option given no times is None too): 0 and "" are values the config validates, so `--shots 0` is an error."""
    return {key: value for key, value in options.items() if value is not None}


def _learner_config(loader, config: Path, out: Optional[str], overrides: dict | None = None):
    """Load a learner's YAML config with `loader` (--out overriding run.out_dir, plus option overrides), or exit 1
    with the error."""
    more = _given({"run.out_dir": out, **(overrides or {})})
    try:
        return loader(config, more or None)
    except ConfigError as err:
        _config_failure(err, config, loader)


def _run_flow(flow, cfg, command: str, errors: tuple[type[BaseException], ...]):
    """Run a learner's flow with Prefect's log in a file; dataset errors, ValueError, RuntimeError and `errors`
    become one plain line naming the log (exit 1)."""
    log_file = log_to_file(PREFECT_HOME.value() / "maskforge-logs", command, verbose=False)
    try:
        return flow(config=cfg)
    except (DatasetError, ValueError, RuntimeError, *errors) as err:
        fail(f"{err} (traceback in {log_file})")


@hsnet_app.command("load")
def hsnet_load(
    checkpoint: Path = typer.Argument(..., help="HSNet checkpoint: the authors' .pt or a maskforge .safetensors."),
) -> None:
    """Load a checkpoint strictly; print its backbone, learnable parameter count and any missing/unexpected keys."""
    try:
        net, report, meta = inspect_checkpoint(checkpoint)
    except CheckpointError as err:
        fail(str(err))
    console.print(f"checkpoint: {checkpoint}", soft_wrap=True)
    console.print(f"format: {'maskforge safetensors' if meta is not None else 'HSNet state dict (module.-prefixed)'}")
    console.print(f"backbone: {net.spec.backbone}")
    console.print(f"learnable parameters: {learnable_parameters(net)}")
    console.print(f"missing keys: {len(report.missing)}", soft_wrap=True)
    for key in report.missing:
        console.print(f"  {key}", markup=False)
    console.print(f"unexpected keys: {len(report.unexpected)}")
    for key in report.unexpected:
        console.print(f"  {key}", markup=False)
    console.print(f"shape mismatches: {len(report.mismatched)}")
    for key in report.mismatched:
        console.print(f"  {key}", markup=False)
    if not report.ok:
        fail(f"{checkpoint} does not load strictly: {report.describe(limit=3)}")
    console.print("loaded strictly: all keys match")


@hsnet_app.command("train")
def hsnet_train(
    config: Path = typer.Argument(..., help="HSNet YAML config (see configs/hsnet-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
) -> None:
    """Run the Prefect flow train_hsnet: episodic training on the fold's base classes; prints the checkpoint."""
    report = _run_flow(train_hsnet, _learner_config(load_hsnet_config, config, out), "hsnet-train", (CheckpointError,))
    console.print(f"trained {report['steps']} steps in {report['seconds']} s; final loss {report['losses'][-1]:.4f}")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)


@hsnet_app.command("eval")
def hsnet_eval(
    config: Path = typer.Argument(..., help="HSNet YAML config (see configs/hsnet-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
) -> None:
    """Run the Prefect flow eval_hsnet: episodic evaluation, benchmark rows appended, table printed."""
    result = _run_flow(eval_hsnet, _learner_config(load_hsnet_config, config, out), "hsnet-eval", (CheckpointError,))
    _print_episodes(f"HSNet {result['backbone']}", result)


def _print_episodes(model: str, result: dict) -> None:
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


# ---------------------------------------------------------------------------------------------------------------------
# GFSS (issue #15): `maskforge gfss load | train-base | train-novel | eval`.
# ---------------------------------------------------------------------------------------------------------------------
gfss_app = typer.Typer(
    help="GFSS learners (FINETUNE, GAPS, with or without synthetic runs): train, evaluate, load.", no_args_is_help=True
)
app.add_typer(gfss_app, name="gfss")


def _gfss_config(config: Path, out: Optional[str], overrides: dict | None = None):
    """Load a GFSS config (--out overriding run.out_dir, plus option overrides), or exit 1 with the error."""
    return _learner_config(load_gfss_config, config, out, overrides)


def _gfss_run(flow, cfg, command: str):
    """Run a GFSS flow with the log in a file; a plain one-line error on failure."""
    return _run_flow(flow, cfg, command, (GfssCheckpointError, GfssModelError))


@gfss_app.command("load")
def gfss_load(
    checkpoint: Path = typer.Argument(..., help="GFSS checkpoint: the GAPS authors' *_final.pt or ours .safetensors."),
) -> None:
    """Load a checkpoint strictly; print its classes and any missing / unexpected / mis-shaped keys (exit 1 on any)."""
    if checkpoint.suffix == ".safetensors":
        try:
            net, meta = load_gfss(str(checkpoint))
        except (GfssCheckpointError, GfssModelError) as err:
            fail(str(err))
        console.print(f"checkpoint: {checkpoint}", soft_wrap=True)
        console.print(f"format: maskforge safetensors; backbone {net.spec.backbone}, {net.spec.num_classes} classes")
        console.print("loaded strictly: all keys match")
        return
    try:
        report = authors_key_report(str(checkpoint))
    except (GfssCheckpointError, GfssModelError) as err:
        fail(str(err))
    console.print(f"checkpoint: {checkpoint}", soft_wrap=True)
    console.print(f"format: GAPS authors' layout (backbone / head); {report['num_classes']} classes")
    console.print(f"backbone tensors: {report['backbone_tensors']}, head tensors: {report['head_tensors']}")
    for name in ("missing", "unexpected", "mismatched"):
        console.print(f"{name} keys: {len(report[name])}")
        for key in report[name]:
            console.print(f"  {key}", soft_wrap=True)
    bad = sum(len(report[n]) for n in ("missing", "unexpected", "mismatched"))
    if bad:
        fail(f"{checkpoint} does not load strictly: {bad} key problem(s) listed above")
    console.print("loaded strictly: all keys match")


@gfss_app.command("train-base")
def gfss_train_base(
    config: Path = typer.Argument(..., help="GFSS YAML config (see configs/gfss-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
) -> None:
    """Run the Prefect flow train_gfss_base: the base model on the fold's leakage-free base set."""
    report = _gfss_run(gfss_flows.train_gfss_base, _gfss_config(config, out), "gfss-train-base")
    console.print(f"trained {report['steps']} steps in {report['seconds']} s; final loss {report['losses'][-1]:.4f}")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)


@gfss_app.command("train-novel")
def gfss_train_novel(
    config: Path = typer.Argument(..., help="GFSS YAML config (see configs/gfss-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    method: Optional[str] = typer.Option(None, "--method", help="finetune or gaps (overrides novel.method)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="A completed maskforge run joining the data (repeatable; novel.synthetic_runs)."
    ),
) -> None:
    """Run the Prefect flow train_gfss_novel: imprint and fine-tune per run seed and step."""
    overrides = _given({"novel.method": method, "novel.synthetic_runs": synthetic})
    report = _gfss_run(gfss_flows.train_gfss_novel, _gfss_config(config, out, overrides), "gfss-train-novel")
    console.print(f"{report['setting']}: {len(report['runs'])} runs x {len(report['task_stream'])} steps")
    console.print(f"novel stage: {report['novel_dir']}", soft_wrap=True)


@gfss_app.command("eval")
def gfss_eval(
    config: Path = typer.Argument(..., help="GFSS YAML config (see configs/gfss-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    method: Optional[str] = typer.Option(None, "--method", help="finetune or gaps (overrides novel.method)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="As in train-novel (novel.synthetic_runs)."
    ),
) -> None:
    """Run the Prefect flow eval_gfss: PIFS evaluation, benchmark row appended, table printed."""
    overrides = _given({"novel.method": method, "novel.synthetic_runs": synthetic})
    result = _gfss_run(gfss_flows.eval_gfss, _gfss_config(config, out, overrides), "gfss-eval")
    title = (
        f"GFSS {result['setting']} on {result['dataset']} fold {result['fold']}, {result['shots']}-shot: "
        f"{result['images']} images, {len(result['runs'])} run seeds (mean ± std, %)"
    )
    table = Table(title=title)
    for col in ("report", "base mIoU", "novel mIoU", "HM"):
        table.add_column(col)
    for row in gfss_summary_table(result):
        table.add_row(row["report"], row["base mIoU"], row["novel mIoU"], row["HM"])
    console.print(table)
    console.print(f"benchmark rows: {result['table_file']}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------------------
# DiffewS (issue #16): `maskforge diffews load | train | eval`.
# ---------------------------------------------------------------------------------------------------------------------
diffews_app = typer.Typer(
    help="DiffewS (Stable Diffusion's UNet as a few-shot segmenter): load, train, evaluate.", no_args_is_help=True
)
app.add_typer(diffews_app, name="diffews")


def _diffews_run(flow, config: Path, out: Optional[str], command: str, overrides: dict | None = None):
    """Load a DiffewS config (--out overriding run.out_dir) and run a flow with the log in a file; a plain one-line
    error on failure."""
    cfg = _learner_config(load_diffews_config, config, out, overrides)
    return _run_flow(flow, cfg, command, (DiffewsCheckpointError, ModelLoadError))


@diffews_app.command("load")
def diffews_load(
    folder: Path = typer.Argument(..., help="A DiffewS UNet folder (the authors' release) or a maskforge checkpoint."),
) -> None:
    """Check a DiffewS UNet strictly: print missing / unexpected / mis-shaped keys (exit 1 on any)."""
    unet_dir = folder / "unet" if (folder / DIFFEWS_COMPLETE).is_file() else folder
    try:
        report, unet, _ = diffews_key_report(unet_dir, str(folder))
    except (DiffewsCheckpointError, DiffewsModelError) as err:
        fail(str(err))
    console.print(f"weights: {report.file}", soft_wrap=True)
    console.print(f"tensors: {report.tensors}; conv_in_ref: {tuple(unet.conv_in_ref.weight.shape)}")
    for name in ("missing", "unexpected", "mis_shaped"):
        keys = getattr(report, name)
        console.print(f"{name.replace('_', '-')} keys: {len(keys)}")
        for key in keys:
            console.print(f"  {key}", soft_wrap=True)
    if not report.ok:
        fail(f"{folder} does not load strictly: {report.summary()}")
    console.print("loaded strictly: all keys match")


@diffews_app.command("train")
def diffews_train(
    config: Path = typer.Argument(..., help="DiffewS YAML config (see configs/diffews-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="A maskforge run whose base-class samples join training (repeatable)."
    ),
) -> None:
    """Run the Prefect flow train_diffews: episodic training on the fold's base classes; prints the checkpoint."""
    overrides = {"train.synthetic_runs": synthetic} if synthetic else None
    report = _diffews_run(diffews_flows.train_diffews, config, out, "diffews-train", overrides)
    console.print(f"trained {report['steps']} steps in {report['seconds']} s; final loss {report['losses'][-1]:.4f}")
    console.print(f"checkpoint: {report['checkpoint']}", soft_wrap=True)


@diffews_app.command("eval")
def diffews_eval(
    config: Path = typer.Argument(..., help="DiffewS YAML config (see configs/diffews-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of training runs (overrides run.out_dir)."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Real supports per episode (overrides eval.shots)."),
    synthetic: Optional[str] = typer.Option(
        None, "--synthetic", help="A maskforge run of the novel classes: adds the KR+NS setting (eval.synthetic_run)."
    ),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="A DiffewS checkpoint or UNet folder (overrides eval.checkpoint)."
    ),
) -> None:
    """Run the Prefect flow eval_diffews: HSNet-protocol episodes, benchmark rows appended, table printed."""
    overrides = _given({"eval.shots": shots, "eval.synthetic_run": synthetic, "eval.checkpoint": checkpoint})
    result = _diffews_run(diffews_flows.eval_diffews, config, out, "diffews-eval", overrides)
    _print_episodes("DiffewS", result)


# ---------------------------------------------------------------------------------------------------------------------
# MaskDiff (issue #17): `maskforge maskdiff train | eval`.
# ---------------------------------------------------------------------------------------------------------------------
maskdiff_app = typer.Typer(
    help="MaskDiff few-shot instance segmentation (TFA detector + mask-diffusion head): train, evaluate.",
    no_args_is_help=True,
)
app.add_typer(maskdiff_app, name="maskdiff")


def _maskdiff_run(flow, config: Path, out: Optional[str], command: str, overrides: dict):
    """Load a MaskDiff config (--out overriding run.out_dir, option overrides) and run a flow with the log in a file;
    a plain one-line error on failure."""
    return _run_flow(flow, _learner_config(load_maskdiff_config, config, out, overrides), command, (OSError,))


def _maskdiff_overrides(shots: Optional[int], seed: Optional[int], synthetic: Optional[list[str]] = None) -> dict:
    """Dotted-key overrides of the K-shot options."""
    return _given({"finetune.shots": shots, "finetune.data_seed": seed, "finetune.synthetic_runs": synthetic})


@maskdiff_app.command("train")
def maskdiff_train(
    config: Path = typer.Argument(..., help="MaskDiff YAML config (see configs/maskdiff-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    shots: Optional[int] = typer.Option(None, "--shots", help="K (1, 2, 3, 5, 10, 30; finetune.shots)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="TFA data seed 0-9 (finetune.data_seed)."),
    synthetic: Optional[list[str]] = typer.Option(
        None, "--synthetic", help="A maskforge run adding novel-class K-shot instances (repeatable)."
    ),
) -> None:
    """Run the Prefect flow train_maskdiff: the base stage (reused when trained), then the K-shot stage."""
    report = _maskdiff_run(
        maskdiff_flows.train_maskdiff, config, out, "maskdiff-train", _maskdiff_overrides(shots, seed, synthetic)
    )
    console.print(f"base stage: {report['base']['stage_dir']}", soft_wrap=True)
    console.print(f"K-shot stage: {report['finetune']['stage_dir']}", soft_wrap=True)


@maskdiff_app.command("eval")
def maskdiff_eval(
    config: Path = typer.Argument(..., help="MaskDiff YAML config (see configs/maskdiff-toy.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", help="Parent folder of stage folders (overrides run.out_dir)."),
    shots: Optional[int] = typer.Option(None, "--shots", help="K of the stage to evaluate (finetune.shots)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="TFA data seed of the stage (finetune.data_seed)."),
    synthetic: Optional[list[str]] = typer.Option(None, "--synthetic", help="As in train (finetune.synthetic_runs)."),
) -> None:
    """Run the Prefect flow eval_maskdiff: COCO segm / bbox AP (pycocotools), base and novel; a row appended."""
    result = _maskdiff_run(
        maskdiff_flows.eval_maskdiff, config, out, "maskdiff-eval", _maskdiff_overrides(shots, seed, synthetic)
    )
    rows = maskdiff_summary_table(result)
    title = (
        f"MaskDiff on {result['dataset']} fold {result['fold']}, {result['shots']}-shot (data seed "
        f"{result['data_seed']}): {result['images']} images, {result['sampling_seeds']} samplings (%)"
    )
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print(f"benchmark rows: {result['table_file']}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------------------
# Toy models (issue #8): `maskforge toy train-diffusion | train-controlnet`.
# ---------------------------------------------------------------------------------------------------------------------
toy_app = typer.Typer(help="Train the tiny toy-world generative models shipped in models/toy.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


def _toy_config(config: Path):

    try:
        return load_toy_train_config(config)
    except ConfigError as err:
        _config_failure(err, config, load_toy_train_config)


@toy_app.command("train-diffusion")
def toy_train_diffusion(
    config: Path = typer.Argument(..., help="Toy training YAML (see configs/toy-train.yaml)."),
    out: Path = typer.Option(Path("models/toy"), "--out", help="Folder receiving sd/ and training.json."),
) -> None:
    """Train the tiny text-to-image model (VAE, then UNet + text encoder) on the fold's base classes."""
    _check_out_folder(out)  # before hours of training, not at the first write
    entry = train_diffusion(_toy_config(config), out, log=console.print)
    console.print(f"wrote {out / 'sd'} in {entry['seconds']} s: {entry['vae']} {entry['diffusion']}", soft_wrap=True)


@toy_app.command("ground")
def toy_ground(
    config: Path = typer.Argument(..., help="Toy training YAML (see configs/toy-train.yaml, section ground)."),
    out: Path = typer.Option(Path("models/toy"), "--out", help="Folder holding the trained sd/ (rewritten)."),
) -> None:
    """Fine-tune the toy SD with the cross-attention grounding loss, so the class word's map covers the object."""
    _check_out_folder(out)
    try:
        entry = ground_diffusion(_toy_config(config), out, log=console.print)
    except FileNotFoundError as err:
        fail(str(err))
    console.print(f"rewrote {out / 'sd'} in {entry['seconds']} s: {entry['diffusion']}", soft_wrap=True)


@toy_app.command("train-controlnet")
def toy_train_controlnet(
    config: Path = typer.Argument(..., help="Toy training YAML (see configs/toy-train.yaml)."),
    out: Path = typer.Option(Path("models/toy"), "--out", help="Folder holding sd/; receives controlnet-KIND/."),
    kind: Optional[list[str]] = typer.Option(None, "--kind", help="Condition kind(s); default: controlnet.kinds."),
) -> None:
    """Train one ControlNet per condition kind on the trained toy SD in OUT/sd (UNet and text encoder frozen)."""
    _check_out_folder(out)
    try:
        entries = train_controlnets(_toy_config(config), out, kind, log=console.print)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    for name, entry in entries.items():
        console.print(f"controlnet-{name}: {entry['seconds']} s, {entry['controlnet']}")
