"""Deployment entry points: the generate flow and the learners' flows, parameterised by config file, dataset, fold."""

from __future__ import annotations

from prefect import flow

from maskforge.flows.diffews import eval_diffews, train_diffews
from maskforge.flows.generate import generate_flow
from maskforge.flows.gfss import gfss_novel_eval, train_gfss_base, train_gfss_novel
from maskforge.flows.hsnet import eval_hsnet, train_hsnet
from maskforge.flows.maskdiff import eval_maskdiff, train_eval_maskdiff, train_maskdiff
from maskforge.tasks.config import load_config
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.hsnet.config import load_hsnet_config
from maskforge.tasks.maskdiff.config import load_maskdiff_config


def _overrides(dataset: str, fold: int, root: str | None, **more) -> dict:
    """Return dotted-key overrides of a config file from deployment parameters (None leaves the file's value)."""
    out = {"dataset.name": dataset, "dataset.fold": fold, **{k: v for k, v in more.items() if v is not None}}
    if root is not None:
        out["dataset.root"] = root
    return out


@flow(name="generate-fold", log_prints=True)
def generate_fold(
    config_path: str,
    dataset: str,
    fold: int,
    shots: int | None = None,
    root: str | None = None,
    out_dir: str | None = None,
    dask_workers: int = 0,
    dask_address: str | None = None,
    dask_cluster_class: str | None = None,
    round: int | str | None = None,
) -> dict:
    """Generate one (dataset, fold) from a config file, overriding its dataset, fold, root, shots and out_dir; the Dask
    parameters fan the classes out (a local cluster, an existing scheduler, or e.g. dask_cuda.LocalCUDACluster).
    round: a number, or "scheduled" (the nightly deployments): the flow run's scheduled date as YYYYMMDD, so each
    night renders a new round and a retry of the same night's run is the same run."""
    more = {"shots.k": shots, "run.out_dir": out_dir, "run.round": scheduled_round(round)}
    config = load_config(config_path, _overrides(dataset, fold, root, **more))
    return generate_flow(dask_workers, dask_address, dask_cluster_class)(config=config)


def scheduled_round(round: int | str | None) -> int | None:
    """Resolve generate_fold's round: None (the config's), a number, or "scheduled": the UTC date of this flow run's
    scheduled start as YYYYMMDD (a manual run's start is its schedule)."""
    if round is None or isinstance(round, int):
        return round
    if str(round).isdigit():
        return int(round)
    if round != "scheduled":
        raise ValueError(f"round: expected a number or 'scheduled', got {round!r}")
    from datetime import timezone

    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time  # a datetime subclass (pendulum's or whenever's by Python version)
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    return int(when.strftime("%Y%m%d"))


@flow(name="train-hsnet-fold", log_prints=True)
def train_hsnet_fold(config_path: str, dataset: str, fold: int, root: str | None = None) -> dict:
    """Train HSNet on one (dataset, fold) from an HSNet config file."""
    return train_hsnet(config=load_hsnet_config(config_path, _overrides(dataset, fold, root)))


@flow(name="eval-hsnet-fold", log_prints=True)
def eval_hsnet_fold(
    config_path: str,
    dataset: str,
    fold: int,
    shots: int | None = None,
    root: str | None = None,
    checkpoint: str | None = None,
    synthetic_run: str | None = None,
    synthetic_per_class: int | None = None,
) -> dict:
    """Evaluate HSNet on one (dataset, fold) from an HSNet config file (checkpoint and shots overridable);
    synthetic_run (a run folder, a selector like latest:toy/0, or the nightly chain's event URL) adds its setting
    with synthetic_per_class (default: the file's) generated supports per class."""
    more = {
        "eval.shots": shots,
        "eval.checkpoint": checkpoint,
        "eval.synthetic_run": synthetic_run,
        "eval.synthetic_per_class": synthetic_per_class,
    }
    overrides = _overrides(dataset, fold, root, **more)
    return eval_hsnet(config=load_hsnet_config(config_path, overrides))


@flow(name="train-gfss-base", log_prints=True)
def train_gfss_base_fold(config_path: str, dataset: str, fold: int, root: str | None = None) -> dict:
    """Train the GFSS base model of one (dataset, fold) from a GFSS config file."""
    return train_gfss_base(config=load_gfss_config(config_path, _overrides(dataset, fold, root)))


@flow(name="train-gfss-novel", log_prints=True)
def train_gfss_novel_fold(
    config_path: str,
    dataset: str,
    fold: int,
    root: str | None = None,
    method: str | None = None,
    synthetic_runs: list[str] | None = None,
    evaluate: bool = True,
    synthetic_run: str | None = None,
) -> dict:
    """Run the GFSS novel stage of one (dataset, fold), then (evaluate) its PIFS evaluation into the results table;
    synthetic_runs names completed maskforge runs (or selectors like last:7:toy/0); synthetic_run, one more (the
    nightly chain's trigger passes the new run's URL here)."""
    runs = [*(synthetic_runs or []), *([synthetic_run] if synthetic_run else [])]
    more = {"novel.method": method, "novel.synthetic_runs": runs or None}
    config = load_gfss_config(config_path, _overrides(dataset, fold, root, **more))
    return gfss_novel_eval(config=config) if evaluate else train_gfss_novel(config=config)


@flow(name="train-diffews", log_prints=True)
def train_diffews_fold(
    config_path: str, dataset: str, fold: int, root: str | None = None, synthetic_runs: list[str] | None = None
) -> dict:
    """Train DiffewS on one (dataset, fold) from a DiffewS config file; synthetic_runs add base-class samples."""
    more = {"train.synthetic_runs": list(synthetic_runs) if synthetic_runs else None}
    return train_diffews(config=load_diffews_config(config_path, _overrides(dataset, fold, root, **more)))


@flow(name="eval-diffews", log_prints=True)
def eval_diffews_fold(
    config_path: str,
    dataset: str,
    fold: int,
    shots: int | None = None,
    root: str | None = None,
    checkpoint: str | None = None,
    synthetic_run: str | None = None,
    synthetic_per_class: int | None = None,
) -> dict:
    """Evaluate DiffewS on one (dataset, fold) from a DiffewS config file; synthetic_run (e.g. the nightly
    regeneration's folder) adds the KR+NS setting with synthetic_per_class (default: the file's) samples."""
    more = {
        "eval.shots": shots,
        "eval.checkpoint": checkpoint,
        "eval.synthetic_run": synthetic_run,
        "eval.synthetic_per_class": synthetic_per_class,
    }
    return eval_diffews(config=load_diffews_config(config_path, _overrides(dataset, fold, root, **more)))


@flow(name="train-maskdiff", log_prints=True)
def train_maskdiff_fold(
    config_path: str,
    dataset: str,
    fold: int,
    root: str | None = None,
    shots: int | None = None,
    data_seed: int | None = None,
    synthetic_runs: list[str] | None = None,
    evaluate: bool = True,
) -> dict:
    """Train MaskDiff's base and K-shot stages on one (dataset, fold), then (evaluate) score it into the table;
    synthetic_runs names maskforge runs whose novel-class samples add K-shot instances."""
    more = {
        "finetune.shots": shots,
        "finetune.data_seed": data_seed,
        "finetune.synthetic_runs": list(synthetic_runs) if synthetic_runs else None,
    }
    config = load_maskdiff_config(config_path, _overrides(dataset, fold, root, **more))
    return train_eval_maskdiff(config=config) if evaluate else train_maskdiff(config=config)


@flow(name="eval-maskdiff", log_prints=True)
def eval_maskdiff_fold(
    config_path: str,
    dataset: str,
    fold: int,
    root: str | None = None,
    shots: int | None = None,
    data_seed: int | None = None,
) -> dict:
    """Evaluate MaskDiff's K-shot stage of one (dataset, fold, K, data seed): COCO AP into the benchmark table."""
    more = {"finetune.shots": shots, "finetune.data_seed": data_seed}
    return eval_maskdiff(config=load_maskdiff_config(config_path, _overrides(dataset, fold, root, **more)))
