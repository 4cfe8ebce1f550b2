"""Stages 2-3 for one novel class: build its object pool and compose its scenes, one deterministic item at a time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from maskforge.eval.datasets.base import SegDataset
from maskforge.eval.instances import INSTANCES_META, instance_to_json
from maskforge.eval.seeds import item_seed
from maskforge.storage.codec import ShardSample
from maskforge.storage.labels import present_classes
from maskforge.tasks.compose import paste_instances, sample_placements
from maskforge.tasks.config import MaskforgeConfig
from maskforge.tasks.fold_plan import ClassPlan, FoldPlan
from maskforge.tasks.objects import PoolObject, object_from_sample, object_from_shot


def sample_key(dataset: str, fold: int, class_id: int, source: str, index: int) -> str:
    """Return the shard key of a sample: dataset, fold, class, source, index; no dots (WebDataset splits there)."""
    return f"{dataset}-f{fold}-c{class_id:04d}-{source}-{index:05d}"


def object_pool(
    dataset: SegDataset, class_plan: ClassPlan, source: str, synthetic: list | None = None
) -> list[PoolObject]:
    """Return the pasteable objects of a class for one source: "real" cuts each real shot, "synthetic" each of the
    class's final diffusion samples (`synthetic`; none is an error naming the class)."""
    if source == "real":
        return [object_from_shot(dataset.load(shot_id), class_plan.class_id) for shot_id in class_plan.shot_ids]
    if source == "synthetic":
        if not synthetic:
            raise ValueError(
                f"generation.sources 'synthetic': class {class_plan.class_name!r} has no diffusion sample to cut "
                "objects from (all were rejected, or none were generated)"
            )
        return [object_from_sample(sample, class_plan.class_id) for sample in synthetic]
    raise ValueError(f"generation.sources: unknown source {source!r}; expected 'real' or 'synthetic'")


def class_samples(
    dataset: SegDataset, config: MaskforgeConfig, plan: FoldPlan, class_plan: ClassPlan, synthetic: list | None = None
) -> Iterator[ShardSample]:
    """Yield the composed scenes of one novel class: samples_per_class per source, each seeded by (run, class,
    index); meta["instances"] holds the base image's instances (pixels its label gives their class, pasted-over ones
    removed), then one per pasted object with its visible pixels, in painting order (instance_to_json records, RLE)."""
    cid, n = class_plan.class_id, config.generation.samples_per_class
    names, config_hash = dataset.classes(), config.hash()
    if not plan.base_subset:
        raise ValueError(f"{plan.dataset} fold {plan.fold}: the base subset is empty; nothing to paste onto")
    for source in config.generation.sources:
        pool = object_pool(dataset, class_plan, source, synthetic)
        for index in range(n):
            seed = item_seed(config.run.data_seed(), cid, index, f"compose-{source}")
            rng = np.random.default_rng(seed)
            base = dataset.load(plan.base_subset[int(rng.integers(len(plan.base_subset)))])
            placements = sample_placements(rng, pool, base.label.shape, config.copy_paste)
            key = sample_key(plan.dataset, plan.fold, cid, source, index)
            what = f"sample {key!r} (base {plan.dataset} image {base.image_id!r})"
            image, label, visible, instances = paste_instances(
                base.image, base.label, base.instances, pool, placements, what
            )
            used = [pool[p.object_index] for p in placements]
            meta = {
                "dataset": plan.dataset,
                "fold": plan.fold,
                "class_id": cid,
                "class_name": class_plan.class_name,
                "source": source,
                "mask_method": used[0].mask_method,
                "seed": seed,
                "shot_ids": sorted({s for o in used for s in o.shot_ids}),
                "scores": {},
                "config_hash": config_hash,
                "prompt": None,
                "model_ids": {},
                "base_image_id": base.image_id,
                "base_classes": [c for c in base.class_ids],
                "class_names": {str(c): names[c] for c in present_classes(label)},
                "objects": [
                    {**p.to_dict(), "shot_ids": list(pool[p.object_index].shot_ids), "visible_pixels": v}
                    for p, v in zip(placements, visible)
                ],
                INSTANCES_META: [instance_to_json(inst) for inst in instances],
            }
            yield ShardSample(key, image, label, meta)
