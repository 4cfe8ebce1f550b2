"""Copy-paste geometry: pasted pixels, occlusion order, visibility counts and placement ranges."""

import numpy as np
import pytest

from maskforge.eval.datasets.base import DatasetError, ImageRecord
from maskforge.tasks.compose import MIN_PASTE_SIDE, Placement, paste_objects, resize_object, sample_placements
from maskforge.tasks.config import CopyPasteConfig
from maskforge.tasks.objects import PoolObject, object_from_shot


def _obj(colour, class_id, h=4, w=6):
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = colour
    mask = np.ones((h, w), bool)
    mask[0, 0] = False  # a hole: pixels outside the mask must keep the base
    return PoolObject(image, mask, class_id, "real", "gt", (f"shot{class_id}",))


def test_pasted_pixels_and_occlusion_order():
    base = np.full((20, 20, 3), 7, np.uint8)
    label = np.zeros((20, 20), np.int32)
    label[0:2, 0:2] = -1
    pool = [_obj((200, 0, 0), 3), _obj((0, 200, 0), 5)]
    placements = [Placement(0, 1.0, 2, 2, 4, 6), Placement(1, 1.0, 4, 5, 4, 6)]
    image, out, visible = paste_objects(base, label, pool, placements)
    assert tuple(image[3, 3]) == (200, 0, 0) and out[3, 3] == 3
    assert tuple(image[5, 6]) == (0, 200, 0) and out[5, 6] == 5  # the later object wins the overlap
    assert out[2, 2] == 0 and tuple(image[2, 2]) == (7, 7, 7)  # the mask hole keeps the base
    assert out[0, 0] == -1  # ignore pixels away from objects survive
    first_mask = np.zeros((20, 20), bool)
    first_mask[2:6, 2:8] = pool[0].mask
    second_mask = np.zeros((20, 20), bool)
    second_mask[4:8, 5:11] = pool[1].mask
    assert visible == [int((first_mask & ~second_mask).sum()), int(second_mask.sum())]
    assert (out == 3).sum() == visible[0] and (out == 5).sum() == visible[1]
    assert np.array_equal(base, np.full((20, 20, 3), 7, np.uint8))  # inputs are not modified


def test_scaled_paste_equals_resized_object():
    rng = np.random.default_rng(0)
    obj = PoolObject(
        rng.integers(0, 255, (10, 8, 3), dtype=np.uint8), rng.random((10, 8)) > 0.3, 2, "real", "gt", ("s",)
    )
    crop, mask = resize_object(obj, 15, 12)
    base = np.zeros((30, 30, 3), np.uint8)
    image, label, _ = paste_objects(base, np.zeros((30, 30), np.int32), [obj], [Placement(0, 1.5, 5, 9, 15, 12)])
    window = image[5:20, 9:21]
    assert np.array_equal(window[mask], crop[mask])  # no rotation, no colour jitter
    assert np.array_equal(label[5:20, 9:21] == 2, mask)


def test_placements_respect_ranges_and_fit():
    cfg = CopyPasteConfig(min_objects=1, max_objects=3, scale_min=0.1, scale_max=2.0)
    pool = [_obj((1, 2, 3), 1, 30, 40), _obj((1, 2, 3), 1, 12, 10)]
    rng = np.random.default_rng(1)
    counts = set()
    for _ in range(300):
        ps = sample_placements(rng, pool, (48, 64), cfg)
        counts.add(len(ps))
        for p in ps:
            h, w = pool[p.object_index].mask.shape
            assert 0.1 <= p.scale <= 2.0
            assert 0 <= p.top and p.top + p.height <= 48 and 0 <= p.left and p.left + p.width <= 64
            assert min(p.height, p.width) >= min(MIN_PASTE_SIDE, h, w)
            assert abs(p.height / h - p.width / w) < 0.2  # aspect kept: one scale for both sides
    assert counts == {1, 2, 3}


def test_placements_are_reproducible():
    cfg = CopyPasteConfig()
    pool = [_obj((1, 2, 3), 1)]
    a = sample_placements(np.random.default_rng(5), pool, (32, 32), cfg)
    b = sample_placements(np.random.default_rng(5), pool, (32, 32), cfg)
    assert a == b


def test_object_from_shot_crops_the_class_bbox_and_rejects_empty_masks():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    label = np.zeros((10, 12), np.int32)
    label[2:5, 3:7] = 4
    label[6, 9] = 4
    label[0, 0] = 9
    obj = object_from_shot(ImageRecord("img1", image, label, (4, 9)), 4)
    assert obj.image.shape == (5, 7, 3) and np.array_equal(obj.image, image[2:7, 3:10])
    assert obj.mask.sum() == 13 and obj.shot_ids == ("img1",)
    with pytest.raises(DatasetError, match="empty support mask: image 'img1' has no pixel of class 5"):
        object_from_shot(ImageRecord("img1", image, label, (4, 9)), 5)
