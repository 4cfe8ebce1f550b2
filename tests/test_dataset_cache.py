"""One dataset per process: a run's stages share the adapter, so COCO's instances JSON is parsed once, not per task."""

import json

import numpy as np
import pytest
from fakes import write_coco_json, write_jpeg
from pycocotools import mask as mask_utils

import maskforge.eval.datasets.coco as coco_module
import maskforge.eval.datasets.toy as toy_module
from maskforge.eval.datasets import forget_datasets, open_dataset
from maskforge.tasks.config import parse_config
from maskforge.tasks.fold_plan import plan_fold
from maskforge.tasks.write_run import finish_run, start_run, write_class_part


class CountingJson:
    """Stands in for the coco module's `json`: counts instances-file parses."""

    def __init__(self) -> None:
        self.loads = 0

    def load(self, *args, **kwargs):
        self.loads += 1
        return json.load(*args, **kwargs)


def _rle(rows: slice, cols: slice) -> dict:
    mask = np.zeros((64, 64), np.uint8)
    mask[rows, cols] = 1
    return {"size": [64, 64], "counts": mask_utils.encode(np.asfortranarray(mask))["counts"].decode()}


def _fake_coco(root):
    """Train: dog (class 17, novel in fold 0) in even images, bicycle (class 2, base) in odd ones; val: 2 images."""
    for split, n in (("train", 8), ("val", 2)):
        images, annotations = [], []
        for i in range(n):
            name = f"COCO_{split}2014_{i + 1:012d}.jpg"
            images.append({"id": i + 1, "file_name": name, "height": 64, "width": 64})
            write_jpeg(root / f"{split}2014" / name, 64, 64)
            annotations.append({
                "id": 100 + i, "image_id": i + 1, "category_id": 18 if i % 2 == 0 else 2, "iscrowd": 0,
                "area": 400.0, "segmentation": _rle(slice(10 + i, 40), slice(12, 44 - i)), "bbox": [12, 10, 20, 20],
            })  # fmt: skip
        write_coco_json(
            root / "annotations" / f"instances_{split}2014.json", {"images": images, "annotations": annotations}
        )
    return root


@pytest.fixture(autouse=True)
def fresh_cache():
    forget_datasets()
    yield
    forget_datasets()


def _run_stages(config) -> dict:
    """The generate flow's stages in its order, without Prefect: plan, one part per class, finish."""
    run = start_run(config)
    plan = plan_fold(open_dataset(config.dataset), config)
    parts = [write_class_part(config, plan, c.class_id, run["url"]) for c in plan.novel]
    return finish_run(config, plan, parts, run["url"])


def test_a_coco_run_parses_its_instances_json_once(tmp_path, monkeypatch):
    counting = CountingJson()
    monkeypatch.setattr(coco_module, "json", counting)
    built = []
    monkeypatch.setattr(coco_module.CocoDataset, "__init__", _counted(coco_module.CocoDataset.__init__, built))
    config = parse_config({
        "run": {"name": "cache", "out_dir": str(tmp_path / "runs")},
        "dataset": {"name": "coco", "root": str(_fake_coco(tmp_path / "coco")), "fold": 0},
        "base": {"subset_size": 4},
        "generation": {"samples_per_class": 2, "classes": ["dog"]},
    })  # fmt: skip
    marker = _run_stages(config)
    assert marker["n_samples"] == 2
    assert len(built) == 1 and counting.loads == 1  # shots and base images both come from train: one parse
    other_fold = config.dataset.model_copy(update={"fold": 1})
    assert open_dataset(other_fold) is open_dataset(config.dataset)  # the fold is not part of the dataset
    assert len(built) == 1 and counting.loads == 1


def test_a_toy_run_builds_its_world_once(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(toy_module.ToyDataset, "__init__", _counted(toy_module.ToyDataset.__init__, built))
    config = parse_config({
        "run": {"name": "cache", "out_dir": str(tmp_path / "runs")},
        "dataset": {"toy": {"image_size": 48, "n_train": 40, "n_val": 4}},
        "base": {"subset_size": 8},
        "generation": {"samples_per_class": 1, "classes": ["red disc", "green square"]},
    })  # fmt: skip
    assert _run_stages(config)["n_samples"] == 2
    assert len(built) == 1
    forget_datasets()
    open_dataset(config.dataset)
    assert len(built) == 2  # forgotten: the next call builds it again


def _counted(init, calls: list):
    def wrapper(self, *args, **kwargs):
        calls.append(args)
        return init(self, *args, **kwargs)

    return wrapper
