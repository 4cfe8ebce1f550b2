"""Prefect task wrappers of the generation stages: typed configs and plans in, one coarse task per class and stage.

This module and flows/ are the only ones that import Prefect; every stage it wraps is a plain function.
Prefect's task cache is off (NO_CACHE): the part markers are the cache, and they stay correct when a run folder
is deleted. Heavy GPU stages hold one slot of the global concurrency limit named by MASKFORGE_GPU_LIMIT.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import httpx
import torch
from prefect import Task, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.concurrency.sync import concurrency
from prefect.states import State

from maskforge.storage.reader import RunReader
from maskforge.storage.results import append_results, read_results, rows_as_dicts, store_config
from maskforge.storage.retention import RetentionPolicy
from maskforge.storage.yaml_config import HashedConfig
from maskforge.tasks.artifacts import (
    ARTIFACT_KINDS,
    artifact_key,
    class_rows,
    contact_sheet,
    links,
    read_rejected,
    rejected_markdown,
    scores_markdown,
)
from maskforge.tasks.benchmark import overview_markdown, stored_configs
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.fold_plan import FoldPlan
from maskforge.tasks.preflight import preflight
from maskforge.tasks.registry import learner as registered
from maskforge.tasks.retention import collect_runs
from maskforge.tasks.textual_inversion import learn_shot_embedding
from maskforge.tasks.write_run import (
    finish_run,
    start_run,
    write_class_part,
    write_generated_part,
    write_refined_part,
)

T = TypeVar("T")

#: Environment variable naming the global concurrency limit GPU tasks occupy (`maskforge serve` sets it to "gpu").
GPU_LIMIT_ENV = "MASKFORGE_GPU_LIMIT"
#: OS errors that can pass on their own (a busy or flaky device or network); a full or read-only disk cannot.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE}
)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may pass on a retry: a lost connection (the API, a remote store), a timeout, CUDA out of
    memory, a busy device. Everything else (bad config, data, models, full disk) fails the same way again."""
    if isinstance(exc, (ConnectionError, TimeoutError, httpx.TransportError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def transient_failure(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect retry condition: retry a failed task only when its exception is_transient."""
    return isinstance(state.data, BaseException) and is_transient(state.data)


@contextmanager
def gpu_slot(device: str = "auto") -> Iterator[None]:
    """Hold one slot of the limit named by MASKFORGE_GPU_LIMIT (strict: a missing limit is an error); no-op unset,
    and for work configured to run on the CPU (`device` "cpu"), which never waits for the GPU."""
    name = os.environ.get(GPU_LIMIT_ENV)
    if not name or device == "cpu":
        yield
        return
    # strict=True: Prefect silently skips a limit that does not exist otherwise, and the GPU would be shared.
    with concurrency(name, occupy=1, strict=True):
        yield


def run_learner_stage(stage: Callable[..., T], config: Any) -> T:
    """Run a learner stage, stage(config, log=...), logging to the task run's log and holding the GPU slot of
    config.run.device for the whole stage (one coarse task: a training loop or an evaluation)."""
    with gpu_slot(config.run.device):
        return stage(config, log=get_run_logger().info)


def record_learner_results(
    results_dir: str,
    rows: list[dict],
    result: dict,
    config: HashedConfig,
    *,
    learner: str,
    table_key: str,
    table: list[dict],
    about: str,
    trend_key: str,
    trend: Callable[..., str],
) -> dict:
    """Store the config the rows' config_hash names (storage/results.py:store_config), append the rows to the
    benchmark table, publish them as the table artifact table_key (described by `about` and where the rows went),
    the markdown trend(table, dataset, fold, shots) as artifact trend_key, and every learner's newest rows of the
    dataset fold as artifact benchmark-DATASET-fFOLD (tasks/benchmark.py)."""
    for config_hash in sorted({row["config_hash"] for row in rows}):
        store_config(results_dir, config_hash, config.hashed())
    url = append_results(results_dir, rows)
    create_table_artifact(key=table_key, table=table, description=f"{about}; rows appended to {url}")
    everything = read_results(results_dir)
    create_markdown_artifact(
        key=trend_key,
        markdown=trend(everything, result["dataset"], result["fold"], result["shots"]),
        description=f"This {learner} evaluation against earlier ones of the same dataset, fold and shots",
    )
    create_markdown_artifact(
        key=f"benchmark-{result['dataset']}-f{result['fold']}",
        markdown=overview_markdown(
            rows_as_dicts(everything), result["dataset"], result["fold"], stored_configs(results_dir)
        ),
        description=f"Every learner's newest rows of {result['dataset']} fold {result['fold']} in {results_dir}",
    )
    return {"table_file": url, "rows": rows}


def _named(fn: Callable, name: str, doc: str, config_class: type) -> Callable:
    """Give a built task's function its name, docstring and the config class its first argument is typed with (what
    Prefect shows and validates)."""
    fn.__name__ = fn.__qualname__ = name.replace("-", "_")
    fn.__doc__ = doc
    fn.__annotations__ = {**fn.__annotations__, "config": config_class}
    return fn


@cache
def stage_task(learner: str, key: str) -> Task:
    """The Prefect task of a learner's stage (its declaration's stages[key], tasks/learner.py): one coarse task named
    by the declaration, holding the GPU slot for the whole stage (a stage with gpu=False: fn(config, *inputs))."""
    spec = registered(learner)
    stage = spec.stages[key]
    # the stage function is imported when the task runs (its module pulls torch), and looked up each time
    if stage.gpu:

        def run(config: Any) -> dict:
            return run_learner_stage(spec.ref(stage.fn), config)

    else:

        def run(config: Any, *inputs: Any) -> Any:
            return spec.ref(stage.fn)(config, *inputs)

    doc = f"Prefect task: {spec.title}'s {stage.doc} ({stage.fn})."
    return task(name=stage.task, cache_policy=NO_CACHE)(_named(run, stage.task, doc, spec.config_class))


def check_task_name(learner: str, check: str) -> str:
    """The task name of a pre-flight check: check_novel_eval_inputs of gfss -> check-gfss-novel-eval-inputs."""
    what = check.removeprefix("check_").removesuffix("_inputs").replace("_", "-")
    return f"check-{learner}-{what}-inputs"


@cache
def check_task(learner: str, check: str) -> Task:
    """The Prefect task of a learner's pre-flight check (tasks/<learner>/preflight.py:<check>), a flow's first task;
    no GPU slot: a wrong input fails in seconds, on one line."""
    spec = registered(learner)

    def run(config: Any) -> None:
        spec.check(check)(config)

    name = check_task_name(learner, check)
    doc = f"Prefect task: {spec.title}'s pre-flight {check} (tasks/{learner}/preflight.py)."
    return task(name=name, cache_policy=NO_CACHE)(_named(run, name, doc, spec.config_class))


@cache
def record_task(learner: str) -> Task:
    """The Prefect task recording a learner's evaluation: its declaration's record(config, result) says the rows and
    artifacts; they are appended to the benchmark table and published (record_learner_results)."""
    spec = registered(learner)

    def run(config: Any, result: dict) -> dict:
        what = spec.ref(spec.record)(config, result)
        return record_learner_results(
            config.eval.results_dir,
            what.rows,
            result,
            config,
            learner=spec.title,
            table_key=what.table_key,
            table=what.table,
            about=what.about,
            trend_key=what.trend_key,
            trend=what.trend,
        )

    name = f"record-{learner}-results"
    doc = f"Prefect task: append {spec.title}'s evaluation rows to the benchmark table; publish its artifacts."
    return task(name=name, cache_policy=NO_CACHE)(_named(run, name, doc, spec.config_class))


@task(name="collect-runs", cache_policy=NO_CACHE)
def collect_runs_task(runs_dir: str, policy: RetentionPolicy, results_dirs: list[str], dry_run: bool) -> dict:
    """Prefect task: the retention stage (tasks/retention.py) on a runs folder, each removal in the task's log."""
    return collect_runs(runs_dir, policy, results_dirs, dry_run, log=get_run_logger().info)


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(config: MaskforgeConfig) -> FoldPlan:
    """Prefect task: check everything the run needs before any run folder exists; return the fold plan."""
    return preflight(config)


@task(name="start-run", cache_policy=NO_CACHE)
def start_run_task(config: MaskforgeConfig) -> dict:
    """Prefect task: start_run."""
    return start_run(config)


@task(name="compose-class", cache_policy=NO_CACHE)
def write_class_part_task(config: MaskforgeConfig, plan: FoldPlan, class_id: int, run: str) -> dict:
    """Prefect task: compose and write one novel class (one task per class keeps Prefect overhead small)."""
    return write_class_part(config, plan, class_id, run)


@task(name="learn-embedding", cache_policy=NO_CACHE)
def learn_embedding_task(config: MaskforgeConfig, plan: FoldPlan, class_id: int, shot_id: str) -> str:
    """Prefect task: one shot's embedding; the bank file named by its cache key makes reruns skip the training."""
    with gpu_slot(config.diffusion.device):
        return learn_shot_embedding(config, plan, class_id, shot_id)


@task(name="generate-class", cache_policy=NO_CACHE)
def write_generated_part_task(config: MaskforgeConfig, plan: FoldPlan, class_id: int, run: str) -> dict:
    """Prefect task: generate and write one novel class's diffusion images (one task per class: models load once)."""
    with gpu_slot(config.diffusion.device):
        return write_generated_part(config, plan, class_id, run)


@task(name="refine-class", cache_policy=NO_CACHE)
def write_refined_part_task(config: MaskforgeConfig, plan: FoldPlan, class_id: int, run: str) -> dict:
    """Prefect task: refine and filter one novel class's diffusion samples (after generate-class)."""
    with gpu_slot(config.refinement.device):
        return write_refined_part(config, plan, class_id, run)


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(config: MaskforgeConfig, plan: FoldPlan, parts: list[dict], run: str) -> dict:
    """Prefect task: finish_run; returns the completion marker."""
    return finish_run(config, plan, parts, run)


def publish_run_artifacts(run_url: str) -> dict[str, str]:
    """Create the run's artifacts in the current Prefect run: samples table, contact-sheet grid, rejected samples,
    score histograms and the manifest link; each names the run folder and the others. Return {kind: key}."""
    reader = RunReader(run_url)
    keys = {kind: artifact_key(run_url, kind) for kind in ARTIFACT_KINDS}
    about = links(run_url)
    records = read_rejected(run_url)
    create_table_artifact(class_rows(reader), key=keys["samples"], description=f"Samples per class. {about}")
    create_markdown_artifact(contact_sheet(reader), key=keys["contact-sheet"], description=f"Contact sheet. {about}")
    create_markdown_artifact(
        rejected_markdown(run_url, records), key=keys["rejected"], description=f"Rejected. {about}"
    )
    create_markdown_artifact(scores_markdown(reader, records), key=keys["scores"], description=f"Scores. {about}")
    manifest = f"{run_url.rstrip('/')}/manifest.parquet"
    link = Path(manifest).resolve().as_uri() if "://" not in manifest else manifest
    create_link_artifact(link, link_text="manifest.parquet", key=keys["manifest"], description=f"Manifest. {about}")
    return keys


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_run_artifacts_task(run_url: str) -> dict[str, str]:
    """Prefect task: publish the run's artifacts (table, contact sheet, manifest link)."""
    return publish_run_artifacts(run_url)
