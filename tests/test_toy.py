"""The procedural toy world: determinism, class table, exact label maps and scene composition."""

import numpy as np
import pytest

from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.config import ToyConfig
from maskforge.eval.datasets.toy import MATERIAL_RGB, ToyDataset, render_scene, toy_class_parts
from maskforge.storage.labels import BACKGROUND

SMALL = ToyConfig(seed=3, image_size=64, n_train=40, n_val=10)


def test_class_table_has_shape_by_material_classes():
    classes = ToyDataset(SMALL).classes()
    assert len(classes) == 16 and classes[1] == "red disc" and classes[16] == "yellow star"
    assert toy_class_parts(7) == ("square", "blue")


def test_rendering_is_deterministic_and_seed_dependent():
    a = render_scene(3, "train", 5, 64)
    b = render_scene(3, "train", 5, 64)
    c = render_scene(4, "train", 5, 64)
    assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1])
    assert a[0].tobytes() != c[0].tobytes()
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8 and a[1].dtype == np.int32


def test_labels_are_exact_material_colours():
    ds = ToyDataset(SMALL)
    seen = set()
    for image_id in ds.image_ids("train"):
        rec = ds.load(image_id)
        for cid in rec.class_ids:
            seen.add(cid)
            pixels = rec.image[rec.label == cid].astype(float).mean(axis=0)
            base = np.array(MATERIAL_RGB[toy_class_parts(cid)[1]], float)
            # the dominant channel(s) of the material show through under texture, jitter and occlusion
            assert np.argmax(pixels) in np.flatnonzero(base >= base.max() - 40), (image_id, cid, pixels)
        bg = rec.image[rec.label == BACKGROUND].astype(float)
        assert (bg.max(axis=1) - bg.min(axis=1)).mean() < 60  # the ground is low-saturation
    assert len(seen) >= 12


def test_scenes_hold_one_to_four_objects_with_occlusion():
    ds = ToyDataset(ToyConfig(seed=0, image_size=64, n_train=60, n_val=4))
    counts = [len(ds.load(i).class_ids) for i in ds.image_ids("train")]
    assert max(counts) <= 4 and min(counts) >= 0 and max(counts) >= 3
    assert np.mean(counts) > 1.5


def test_class_index_is_pixel_presence():
    ds = ToyDataset(SMALL)
    index = ds.class_index("val")
    assert set(index) == set(range(1, 17))
    for cid, ids in index.items():
        for image_id in ids:
            assert (ds.load(image_id).label == cid).any()


def test_unknown_ids_and_splits_are_errors():
    ds = ToyDataset(SMALL)
    with pytest.raises(DatasetError, match="unknown image id 'train_000040'"):
        ds.load("train_000040")
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        ds.image_ids("test")
    with pytest.raises(DatasetError, match="unknown class name 'purple disc'"):
        ds.class_id("purple disc")
    assert ds.class_id("blue star") == 15 and ds.class_id(15) == 15
