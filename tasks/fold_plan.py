"""Stage 1, load the fold: novel classes, their K real shots, and the class-balanced base subset for copy-paste."""

from __future__ import annotations

from dataclasses import dataclass

from maskforge.eval.datasets.base import DatasetError, SegDataset
from maskforge.eval.episodes import balanced_base_subset, base_set, sample_shots
from maskforge.eval.folds import get_fold
from maskforge.tasks.config import MaskforgeConfig


@dataclass(frozen=True)
class ClassPlan:
    """What one novel class gets: its id, name and the ids of its K real shots."""

    class_id: int
    class_name: str
    shot_ids: tuple[str, ...]


@dataclass(frozen=True)
class FoldPlan:
    """The work of one generation run: the fold, one ClassPlan per novel class, and the base images to paste onto."""

    dataset: str
    fold: int
    novel: tuple[ClassPlan, ...]
    base_classes: tuple[int, ...]
    base_set_size: int
    base_subset: tuple[str, ...]

    def novel_class(self, class_id: int) -> ClassPlan:
        """Return the ClassPlan of a novel class; another id is an error listing the novel ones."""
        for class_plan in self.novel:
            if class_plan.class_id == class_id:
                return class_plan
        raise ValueError(f"class id {class_id} is not a novel class of the plan ({[c.class_id for c in self.novel]})")


def plan_fold(dataset: SegDataset, config: MaskforgeConfig) -> FoldPlan:
    """Resolve the fold's novel classes (optionally a named subset), sample K shots each, build the base subset."""
    dcfg = config.dataset
    fold = get_fold(dataset.name, dcfg.fold, dcfg.coco_fold_mode)
    names = dataset.classes()
    novel_ids = list(fold.novel)
    if config.generation.classes is not None:
        wanted = [dataset.class_id(c) for c in config.generation.classes]
        outside = [names[c] for c in wanted if c not in fold.novel]
        if outside:
            raise DatasetError(
                f"generation.classes: {outside} are not novel classes of {dataset.name} fold {dcfg.fold}; "
                f"novel classes are {[names[c] for c in fold.novel]}"
            )
        novel_ids = sorted(set(wanted))
    for split in (config.shots.split, config.base.split):
        if split not in dataset.splits():
            raise DatasetError(f"{dataset.name}: unknown split {split!r}; expected one of {dataset.splits()}")
    shot_index = dataset.class_index(config.shots.split)
    plans = tuple(
        ClassPlan(
            cid,
            names[cid],
            tuple(sample_shots(shot_index, dataset.name, dcfg.fold, cid, config.shots.k, config.shots.seed)),
        )
        for cid in novel_ids
    )
    base_index = dataset.class_index(config.base.split)
    d_base = base_set(dataset.image_ids(config.base.split), base_index, fold.novel)
    subset = balanced_base_subset(
        d_base, base_index, fold.base, config.base.subset_size, dataset.name, dcfg.fold, config.run.data_seed()
    )
    return FoldPlan(dataset.name, dcfg.fold, plans, fold.base, len(d_base), tuple(subset))
