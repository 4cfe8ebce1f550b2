"""toy.variety: a toy world where K supports need not show what a class is (for MaskDiff's guidance study), without
changing the default world's bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from maskforge.eval.datasets.config import DatasetConfig, ToyConfig
from maskforge.eval.datasets.toy import MATERIAL_RGB, ToyDataset, render_scene_instances
from maskforge.eval.datasets.toy_variety import EXTRA_COLOURS, MAX_VARIETY, extra_look, look_name
from maskforge.eval.folds import TOY_CLASSES, TOY_SHAPES
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff.config import parse_maskdiff_config

#: sha256 of the images and label maps of toy scenes train 0-5 at 64 px, world seed 0, rendered by the code before
#: toy.variety existed (git HEAD 7981a0c's eval/datasets/toy.py): the default world must keep these bytes.
DEFAULT_WORLD_SHA256 = "b234f17c22104f511322d1e1bdb62ef3a9563405024c94863b9b5cd6d93d1609"


def scenes_sha(variety: int) -> str:
    """sha256 over the image and label bytes of scenes train 0-5 (64 px, world seed 0)."""
    digest = hashlib.sha256()
    for i in range(6):
        image, label, _ = render_scene_instances(0, "train", i, 64, variety)
        digest.update(image.tobytes())
        digest.update(label.tobytes())
    return digest.hexdigest()


def test_the_default_world_is_byte_identical():
    assert scenes_sha(1) == DEFAULT_WORLD_SHA256
    assert scenes_sha(3) != DEFAULT_WORLD_SHA256
    assert ToyConfig().model_dump() == {"seed": 0, "image_size": 96, "n_train": 400, "n_val": 100}  # hash unchanged
    assert ToyConfig(variety=2).model_dump()["variety"] == 2


def test_extra_looks_are_distinct_and_never_a_default_look():
    looks = [extra_look(c, k) for c in range(1, len(TOY_CLASSES) + 1) for k in range(1, MAX_VARIETY)]
    assert MAX_VARIETY == 3 and len(set(looks)) == len(looks) == 32
    default_colours = set(MATERIAL_RGB.values())
    assert all(shape not in TOY_SHAPES and rgb not in default_colours for shape, _, rgb in looks)
    assert look_name(1, 0) == "red disc" and look_name(1, 1) == "purple hexagon" and look_name(16, 2) == "black diamond"
    with pytest.raises(ValueError, match="look 3; expected 1..2"):
        extra_look(1, 3)


def test_a_class_spans_several_looks_and_instances_stay_exact():
    """At variety 3, class 1 (red disc) objects come in red and in other colours; label maps and instances agree."""
    data = ToyDataset(ToyConfig(image_size=48, n_train=8, n_val=60, variety=3))
    colours = []
    for image_id in data.image_ids("val"):
        record = data.load(image_id)
        painted = np.zeros(record.label.shape, int)
        for inst in record.instances:
            assert (record.label[inst.mask] == inst.class_id).all()
            painted += inst.mask
            if inst.class_id == 1 and inst.area >= 30:
                colours.append(record.image[inst.mask].mean(0))
        assert painted.max() <= 1 and ((painted == 1) == (record.label > 0)).all()
    red = np.array(MATERIAL_RGB["red"])
    near = [np.abs(c - red).max() < 60 for c in colours]
    assert any(near) and not all(near), len(colours)  # both the own look and extra looks occur
    extra = {name: np.array(rgb) for name, rgb, _ in EXTRA_COLOURS}
    far = [c for c, n in zip(colours, near) if not n]
    assert all(min(np.abs(c - e).max() for e in (extra["purple"], extra["brown"])) < 70 for c in far)


def test_runs_of_another_variety_are_another_world():
    ours = DatasetConfig(toy={"variety": 3})
    theirs = DatasetConfig().model_dump()
    assert "variety 1); this config has seed 0, image_size 96, variety 3" in ours.mismatch(theirs, world=True)
    assert DatasetConfig().mismatch(theirs, world=True) is None
    with pytest.raises(ConfigError, match="dataset.toy.variety"):
        parse_maskdiff_config({"dataset": {"toy": {"variety": 4}}})
