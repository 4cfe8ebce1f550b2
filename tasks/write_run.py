"""Stage 4, write the run: a run folder per resolved config, per-class shard parts, then one manifest and marker."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rich.progress import track

from maskforge.eval.datasets import open_dataset
from maskforge.models.loading import ModelLoadError, cached_pipelines, content_id, model_refs
from maskforge.storage.assemble import PARTS_DIR, assemble_run, is_complete
from maskforge.storage.catalogue import catalogue_row, record_run
from maskforge.storage.codec import ShardSample
from maskforge.storage.fs import absolute, atomic_write_bytes, exists, join, remove_stale_temporaries, remove_tree
from maskforge.storage.object_store import use_storage_options
from maskforge.storage.reader import RunReader
from maskforge.storage.shards import RunWriter, write_config
from maskforge.storage.yaml_config import digest
from maskforge.tasks.artifacts import rejected_record, rejected_url
from maskforge.tasks.class_samples import class_samples
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.diffusion import class_shots, diffusion_samples
from maskforge.tasks.fold_plan import FoldPlan
from maskforge.tasks.refine import load_segmenter, refine_class


def config_model_ids(config: MaskforgeConfig) -> dict[str, str]:
    """Return {model name: revision or content id} of every model a generation config uses (the diffusion
    section's models as `model_refs` names them, and "refinement" for the HSNet checkpoint).

    A missing path is the same ModelLoadError loading would raise, only earlier.
    """
    ids = {name: ref.revision for name, ref in model_refs(config.diffusion).items()} if config.diffusion else {}
    if config.refinement is not None:
        checkpoint = Path(config.refinement.checkpoint).expanduser()
        if not checkpoint.is_file():
            raise ModelLoadError(
                f"refinement.checkpoint: file {checkpoint} does not exist (expected an HSNet checkpoint)"
            )
        ids["refinement"] = content_id(checkpoint)
    return ids


def run_hash(config: MaskforgeConfig) -> str:
    """Return a run's identity: the config hash, combined with the content ids of the models it uses (if any), so
    retrained weights under the same path make a new run instead of reusing one made with the old weights."""
    models = config_model_ids(config)
    if not models:
        return config.hash()
    return digest({"config": config.hash(), "models": models})


def run_url(config: MaskforgeConfig) -> str:
    """Return the run folder of a config and its models: OUT_DIR/NAME-HASH12 (see run_hash), a local OUT_DIR made
    absolute here, in the flow's process: Dask workers run elsewhere, in their own working directories."""
    return join(absolute(config.run.out_dir), f"{config.run.name}-{run_hash(config)[:12]}")


def open_store(config: MaskforgeConfig) -> None:
    """Register the config's run.storage_options for its out_dir in this process (a Dask worker included) before
    any read or write of the run; without them the environment's credentials and endpoint apply."""
    use_storage_options(config.run.out_dir, config.run.storage_options)


def part_url(run: str, class_id: int, stage: str = "compose") -> str:
    """Return the staging folder of one class's shards of a stage ("compose" or "diffusion") inside a run."""
    return join(run, PARTS_DIR, part_prefix(class_id, stage))


def part_prefix(class_id: int, stage: str) -> str:
    """Return the shard prefix of a class's part: cNNNN composed scenes, cNNNN-gen diffusion images, cNNNN-syn the
    diffusion images after refinement and filtering."""
    suffixes = {"compose": "", "diffusion": "-gen", "refine": "-syn"}
    if stage not in suffixes:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(suffixes)}")
    return f"c{class_id:04d}{suffixes[stage]}"


def start_run(config: MaskforgeConfig) -> dict:
    """Create the run folder with its resolved config; report whether a completed run is already there."""
    open_store(config)
    url = run_url(config)
    # a kill between a temporary file's write and its rename (e.g. rejected/.cNNNN.json.<uuid>.tmp during
    # refinement) leaves it behind; the run's one writer is this flow, so whatever matches the names is stale
    remove_stale_temporaries(url)
    if is_complete(url):
        if exists(join(url, PARTS_DIR)):  # left by a kill during finish-run after the marker was written
            remove_tree(join(url, PARTS_DIR))
        catalogue(config, url, RunReader(url, verify=False).marker)  # a kill between marker and row: the row now
        return {"url": url, "complete": True}
    write_config(url, config.stored())
    return {"url": url, "complete": False}


def write_part(
    config: MaskforgeConfig,
    url: str,
    prefix: str,
    class_plan,
    samples: Iterable[ShardSample],
    total: int,
    what: str,
    extra: dict | None = None,
) -> dict:
    """Write samples as a completed shard part at url (shards prefix-NNNNNN.tar); return its summary."""
    counts: Counter[str] = Counter()
    with RunWriter(
        url, config.shards.max_count, config.shards.max_bytes, config.shards.jpeg_quality, shard_prefix=prefix
    ) as writer:
        for sample in track(samples, total=total, description=f"{what} {class_plan.class_name}", transient=True):
            writer.write(sample)
            counts[sample.meta["source"]] += 1
        summary = {
            "class_id": class_plan.class_id,
            "class_name": class_plan.class_name,
            "samples_per_source": dict(counts),
            **(extra or {}),
        }
        writer.finish(summary)
    return {"url": url, **summary}


def write_class_part(config: MaskforgeConfig, plan: FoldPlan, class_id: int, run: str) -> dict:
    """Compose one novel class's samples and write them as a completed shard part; return the part's counts.

    With the "synthetic" source, the class's diffusion part (refined when configured) must be complete already.
    """
    open_store(config)
    class_plan = plan.novel_class(class_id)
    url = part_url(run, class_id)
    if is_complete(url):  # finished by an earlier, interrupted attempt: samples are deterministic, reuse them
        return {"url": url, **RunReader(url).summary}
    dataset = open_dataset(config.dataset)
    total = config.generation.samples_per_class * len(config.generation.sources)
    synthetic = None
    if "synthetic" in config.generation.sources:  # the class's final diffusion part: refined when configured
        stage = "refine" if config.refinement is not None else "diffusion"
        synthetic = list(RunReader(part_url(run, class_id, stage)))
    samples = class_samples(dataset, config, plan, class_plan, synthetic)
    return write_part(config, url, part_prefix(class_id, "compose"), class_plan, samples, total, "compose")


def write_generated_part(config: MaskforgeConfig, plan: FoldPlan, class_id: int, run: str) -> dict:
    """Generate one novel class's diffusion images with coarse masks and write them as a completed part."""
    open_store(config)
    class_plan = plan.novel_class(class_id)
    url = part_url(run, class_id, "diffusion")
    if is_complete(url):
        return {"url": url, **RunReader(url).summary}
    dataset = open_dataset(config.dataset)
    samples = diffusion_samples(cached_pipelines(config.diffusion), dataset, config, plan, class_plan)
    return write_part(config, url, part_prefix(class_id, "diffusion"), class_plan, samples, len(samples), "diffuse")


def write_refined_part(config: MaskforgeConfig, plan: FoldPlan, class_id: int, run: str) -> dict:
    """Refine one class's diffusion part (AlignDiff Alg. 1), drop OOD samples, write the result as a new part.

    The part's summary counts the rejected samples (out of distribution, or left without a class pixel) and names
    them: nothing is dropped silently.
    """
    open_store(config)
    class_plan = plan.novel_class(class_id)
    url = part_url(run, class_id, "refine")
    if is_complete(url):
        return {"url": url, **RunReader(url).summary}
    generated = list(RunReader(part_url(run, class_id, "diffusion")))
    dataset = open_dataset(config.dataset)
    real = list(class_shots(dataset, class_plan).values())
    dropped: list[ShardSample] = []
    kept, rejected = refine_class(
        load_segmenter(config.refinement), generated, real, class_id, config.refinement, dropped
    )
    # what was rejected stays out of the shards, but is kept for the UI (written before the part's marker: a rerun
    # of an interrupted part rewrites it with the same content)
    reasons = {key: reason for reason, keys in rejected.items() for key in keys}
    record = rejected_record(class_plan.class_id, class_plan.class_name, dropped, reasons, config.refinement)
    atomic_write_bytes(rejected_url(run, class_id), json.dumps(record, sort_keys=True).encode())
    extra = {"ood_rejected": len(rejected["ood"]), "empty_rejected": len(rejected["empty"]), "rejected_keys": rejected}
    return write_part(config, url, part_prefix(class_id, "refine"), class_plan, kept, len(kept), "refine", extra)


def run_summary(config: MaskforgeConfig, plan: FoldPlan, parts: list[dict]) -> dict:
    """Return the run summary: samples per class and source, shots, base-set sizes and the config hash."""
    return {
        "dataset": plan.dataset,
        "fold": plan.fold,
        "config_hash": config.hash(),
        "n_samples": sum(sum(p["samples_per_source"].values()) for p in parts),
        "samples_per_class": _per_class(parts),
        "ood_rejected": {p["class_name"]: p["ood_rejected"] for p in parts if "ood_rejected" in p},
        "empty_rejected": {p["class_name"]: p["empty_rejected"] for p in parts if "empty_rejected" in p},
        "shots": {c.class_name: list(c.shot_ids) for c in plan.novel},
        "base_set_size": plan.base_set_size,
        "base_subset_size": len(plan.base_subset),
    }


def _per_class(parts: list[dict]) -> dict[str, dict[str, int]]:
    """Merge the parts' sample counts into {class name: {source: count}} (a class has one part per stage)."""
    merged: dict[str, dict[str, int]] = {}
    for p in parts:
        merged.setdefault(p["class_name"], {}).update(p["samples_per_source"])
    return merged


def catalogue(config: MaskforgeConfig, run: str, marker: dict) -> str:
    """Record a complete run in the catalogue of its runs folder (storage/catalogue.py); return the row's URL."""
    return record_run(absolute(config.run.out_dir), catalogue_row(run, marker, config.resolved()))


def finish_run(config: MaskforgeConfig, plan: FoldPlan, parts: list[dict], run: str) -> dict:
    """Move the parts' shards into the run, write the manifest and summary, and the completion marker last; then
    the run's catalogue row."""
    open_store(config)
    marker = assemble_run(run, [p["url"] for p in parts], run_summary(config, plan, parts))
    catalogue(config, run, marker)
    return marker
