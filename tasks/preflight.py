"""Pre-flight check of a generation run: everything a run will need, validated before any work and any run folder.

The output location, the dataset root, the classes and their shots (decoded), every model folder and weight header,
the refinement checkpoint and the devices asked for: each fault is one ValueError or FileNotFoundError whose message
names the field, file or value. Deterministic faults found here never reach a task, so they are never retried.
"""

from __future__ import annotations

from maskforge.eval.datasets import open_dataset
from maskforge.models.device import resolve_device
from maskforge.models.hsnet.checkpoint import CheckpointError, infer_spec, read_state
from maskforge.models.loading import check_models, resolve_device_dtype
from maskforge.storage.fs import check_output_location
from maskforge.storage.object_store import use_storage_options
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.fold_plan import FoldPlan, plan_fold

#: Rough bytes per stored pixel of a sample (q95 JPEG, label PNG, json); the free-space check wants twice the estimate.
BYTES_PER_PIXEL = 1.5
#: Side assumed for on-disk datasets' images when estimating the space composed scenes take.
TYPICAL_SIDE = 512


def estimate_bytes(config: MaskforgeConfig, plan: FoldPlan) -> int:
    """Return a rough upper estimate of a run's bytes: composed scenes plus diffusion images (soft maps included)."""
    classes = len(plan.novel)
    side = config.dataset.toy.image_size if config.dataset.name == "toy" else TYPICAL_SIDE
    composed = classes * config.generation.samples_per_class * len(config.generation.sources) * side * side
    generated = 0
    if config.diffusion is not None:
        d = config.diffusion
        per_class = (
            d.text.samples + d.embedding.samples + len(d.controlnet.conditions) * d.controlnet.per_shot * config.shots.k
        )
        extra = 2 if d.xattn.store_soft_map else 0  # float16 soft map at image size
        generated = classes * per_class * d.image_size * d.image_size * (1 + extra / BYTES_PER_PIXEL)
    return int(BYTES_PER_PIXEL * (composed + generated))


def preflight(config: MaskforgeConfig) -> FoldPlan:
    """Validate everything the run needs (see the module docstring) and return its fold plan."""
    # the store is probed with the config's storage_options, as the run will write it (tasks/write_run.py:open_store)
    use_storage_options(config.run.out_dir, config.run.storage_options)
    check_output_location(config.run.out_dir)
    dataset = open_dataset(config.dataset)
    plan = plan_fold(dataset, config)
    for class_plan in plan.novel:
        for shot_id in class_plan.shot_ids:
            dataset.load(shot_id)  # decodes image and label: a broken shot fails here, not inside a task
    if config.diffusion is not None:
        resolve_device_dtype(config.diffusion.device, config.diffusion.dtype)
        check_models(config.diffusion)
    if config.refinement is not None:
        resolve_device(config.refinement.device, "refinement.device")
        try:
            state, meta = read_state(config.refinement.checkpoint)
            infer_spec(state, meta, config.refinement.checkpoint)
        except CheckpointError as err:
            raise CheckpointError(f"refinement.checkpoint: {err}") from None
    check_output_location(config.run.out_dir, 2 * estimate_bytes(config, plan))
    return plan
