"""The toy oracle recognises rendered toy objects and segments them, and sees nothing on unpainted images."""

import numpy as np
import pytest

from maskforge.eval.datasets.toy import render_object, render_scene
from maskforge.eval.folds import TOY_CLASSES
from maskforge.eval.metrics import iou
from maskforge.eval.toy_oracle import dominant_material, oracle_mask, recognise, shape_of


def test_oracle_recognises_rendered_objects():
    seen, ious = [], []
    for cid, name in enumerate(TOY_CLASSES, 1):
        for i in range(8):
            image, mask = render_object(11, cid, i, 64)
            seen.append(recognise(image) == name)
            ious.append(iou(oracle_mask(image, name.split()[0]), mask))
    assert np.mean(seen) >= 0.9
    assert np.mean(ious) >= 0.95


def test_oracle_mask_on_scenes_matches_material_pixels():
    # in multi-object scenes the oracle's largest segment of a material lies on that material's objects
    image, label = render_scene(3, "val", 5, 96)
    cid = int(np.bincount(label[label > 0]).argmax())
    material = TOY_CLASSES[cid - 1].split()[0]
    same_material = np.isin(label, [c for c, n in enumerate(TOY_CLASSES, 1) if n.startswith(material)])
    found = oracle_mask(image, material)
    assert found.sum() > 0
    assert (found & same_material).sum() / found.sum() >= 0.9


def test_oracle_sees_nothing_on_grey_and_rejects_unknown_material():
    grey = np.full((64, 64, 3), 128, np.uint8)
    assert dominant_material(grey) is None and recognise(grey) is None
    assert shape_of(np.zeros((64, 64), bool)) is None
    with pytest.raises(ValueError, match="purple"):
        oracle_mask(grey, "purple")


def test_oracle_names_no_object_in_colour_noise():
    # random-weight diffusion models draw saturated noise; scattered paint is not an object
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    assert all(dominant_material(x) is not None for x in noise)  # the noise is painted...
    assert [recognise(x) for x in noise] == [None] * 8  # ...but gathers into no object
