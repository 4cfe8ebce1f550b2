"""Instances of composed scenes: occlusion by pasted objects, meta["instances"] in shards, sample_instances."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from maskforge.eval.datasets.base import ImageRecord, SegDataset
from maskforge.eval.instances import (
    Instance,
    InstanceError,
    check_label_agreement,
    encode_rle,
    instance_to_json,
    sample_instances,
)
from maskforge.storage.codec import ShardSample
from maskforge.storage.labels import IGNORE, present_classes
from maskforge.storage.reader import RunReader
from maskforge.storage.shards import RunWriter
from maskforge.tasks.class_samples import class_samples
from maskforge.tasks.compose import Placement, paste_instances, paste_objects
from maskforge.tasks.config import parse_config
from maskforge.tasks.fold_plan import ClassPlan, FoldPlan
from maskforge.tasks.objects import PoolObject

#: The meta keys class_samples wrote before instances existed; they must stay as they were.
OLD_META_KEYS = {
    "dataset", "fold", "class_id", "class_name", "source", "mask_method", "seed", "shot_ids", "scores",
    "config_hash", "prompt", "model_ids", "base_image_id", "base_classes", "class_names", "objects",
}  # fmt: skip


def _obj(colour, class_id, h=4, w=6, hole=True):
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = colour
    mask = np.ones((h, w), bool)
    mask[0, 0] = not hole
    return PoolObject(image, mask, class_id, "real", "gt", (f"shot{class_id}",))


def _box(shape, rows, cols, inner=None):
    out = np.zeros(shape, bool)
    out[rows, cols] = True if inner is None else inner
    return out


def _base_scene():
    """A 20x20 base annotated as COCO is: a class-2 annotation reaching past its label pixels, a crowd region of
    class 4 (IGNORE in the label) under a class-8 object, and a small class-6 object.

    Returns image, label, the annotated instances and the visible masks of the four annotations.
    """
    label = np.zeros((20, 20), np.int32)
    b2 = _box((20, 20), slice(10, 16), slice(4, 12))
    crowd = _box((20, 20), slice(0, 3), slice(0, 20))
    b6 = _box((20, 20), slice(11, 13), slice(13, 15))
    b8 = _box((20, 20), slice(2, 4), slice(14, 18))
    label[b2], label[crowd], label[b6], label[b8] = 2, IGNORE, 6, 8
    annotated = (
        Instance(2, _box((20, 20), slice(10, 17), slice(4, 15))),  # overlaps the class-6 object and background
        Instance(4, crowd, iscrowd=True),  # overlaps the class-8 object
        Instance(6, b6),
        Instance(8, b8),
    )
    return np.full((20, 20, 3), 9, np.uint8), label, annotated, (b2, crowd & ~b8, b6, b8)


def _assert_same(got, expected):
    assert [(i.class_id, i.iscrowd) for i in got] == [(c, k) for c, _, k in expected]
    for inst, (_, mask, _) in zip(got, expected):
        assert inst.mask.dtype == bool and np.array_equal(inst.mask, mask)


def test_paste_instances_keeps_visible_pixels_only():
    image0, label0, base_instances, (b2, crowd, _, b8) = _base_scene()
    pool = [_obj((200, 0, 0), 3), _obj((0, 200, 0), 5), _obj((0, 0, 200), 7, 8, 8, hole=False)]
    placements = [
        Placement(0, 1.0, 2, 2, 4, 6),  # over the crowd's last row
        Placement(1, 1.0, 4, 5, 4, 6),  # hides part of the first object
        Placement(0, 1.0, 12, 12, 4, 6),  # hidden entirely by the next one
        Placement(2, 1.0, 10, 10, 8, 8),  # covers the class-6 object and two columns of the class-2 one
    ]
    image, label, visible, instances = paste_instances(image0, label0, base_instances, pool, placements)
    m0 = _box((20, 20), slice(2, 6), slice(2, 8), pool[0].mask)
    m1 = _box((20, 20), slice(4, 8), slice(5, 11), pool[1].mask)
    m2 = _box((20, 20), slice(12, 16), slice(12, 18), pool[0].mask)
    m3 = _box((20, 20), slice(10, 18), slice(10, 18))
    cover = m0 | m1 | m2 | m3
    expected = [
        (2, b2 & ~cover, False),
        (4, crowd & ~cover, True),  # the class-6 object is fully covered: dropped
        (8, b8, False),
        (3, m0 & ~m1, False),
        (5, m1, False),  # the third placement is fully hidden: dropped
        (7, m3, False),
    ]
    _assert_same(instances, expected)
    assert [i.area for i in instances] == [48 - 12, 60 - 4 - 5, 8, 23 - 5, 23, 64]
    assert visible == [18, 23, 0, 64]
    for inst in instances:  # labels agree: every instance pixel carries its class (crowd: IGNORE)
        assert set(np.unique(label[inst.mask])) == ({IGNORE} if inst.iscrowd else {inst.class_id})
    check_label_agreement(label, instances, "scene")
    # the old API gives the same pixels and counts
    image_b, label_b, visible_b = paste_objects(image0, label0, pool, placements)
    assert np.array_equal(image, image_b) and np.array_equal(label, label_b) and visible == visible_b
    assert np.array_equal(label0[b2], np.full(int(b2.sum()), 2))  # inputs untouched


def test_paste_instances_rejects_a_base_mask_of_another_size():
    image, label, _, _ = _base_scene()
    with pytest.raises(InstanceError, match=r"image 'b7': instance 0 has a \(20, 21\) mask, the label map is \(20, "):
        paste_instances(image, label, [Instance(2, np.ones((20, 21), bool))], [], [], "image 'b7'")


def test_check_label_agreement_names_the_mismatch():
    label = np.zeros((6, 6), np.int32)
    label[1:3, 1:3] = 2
    label[4:, :] = IGNORE
    mask = _box((6, 6), slice(1, 4), slice(1, 3))  # row 3 is background in the label
    with pytest.raises(InstanceError, match=r"scene s: instance 0 \(class 2\) has 2 pixels labelled \[0\]"):
        check_label_agreement(label, [Instance(2, mask)], "scene s")
    ignore = _box((6, 6), slice(4, 6), slice(0, 6))
    check_label_agreement(label, [Instance(3, ignore, iscrowd=True)], "scene s")  # crowd over IGNORE is fine
    with pytest.raises(InstanceError, match=r"instance 1 \(class 3\) has 12 pixels labelled \[-1\]"):
        check_label_agreement(label, [Instance(2, label == 2), Instance(3, ignore)], "scene s")


# --- class_samples ------------------------------------------------------------------------------------------------


class FakeDataset(SegDataset):
    """Two shots of novel class 1 and three 24x24 base images with instances of classes 2 and 3 (`overlapping`:
    base image b1 annotates its class-3 object over the class-2 one, as COCO annotations overlap)."""

    name = "fake"

    def __init__(self, overlapping: bool = False):
        self.records = {}
        for i in range(2):
            label = np.zeros((24, 24), np.int32)
            label[4 + i : 14, 6 : 18 - i] = 1
            image = np.zeros((24, 24, 3), np.uint8)
            image[..., 0] = 40 + 50 * i
            self.records[f"s{i}"] = ImageRecord(f"s{i}", image, label, (1,))
        for i in range(3):
            label = np.zeros((24, 24), np.int32)
            a = _box((24, 24), slice(2 + i, 20), slice(3, 12))
            b = _box((24, 24), slice(5, 22), slice(10 + i, 23)) & ~a  # occluded by `a` in the base image
            label[a], label[b] = 2, 3
            label[22:, :3] = IGNORE
            instances = (Instance(2, a), Instance(3, b | a) if overlapping and i == 1 else Instance(3, b))
            self.records[f"b{i}"] = ImageRecord(
                f"b{i}", np.full((24, 24, 3), 30 * i, np.uint8), label, (2, 3), instances
            )

    def classes(self):
        return {1: "novel", 2: "two", 3: "three"}

    def splits(self):
        return ("train",)

    def image_ids(self, split):
        return sorted(self.records)

    def load(self, image_id):
        return self.records[image_id]

    def class_index(self, split):
        return {c: [k for k, r in self.records.items() if c in r.class_ids] for c in (1, 2, 3)}


def _compose(overlapping: bool = False, n: int = 6):
    dataset = FakeDataset(overlapping)
    config = parse_config(
        {"generation": {"samples_per_class": n}, "copy_paste": {"min_objects": 2, "max_objects": 3, "scale_min": 0.5}}
    )
    class_plan = ClassPlan(1, "novel", ("s0", "s1"))
    plan = FoldPlan("fake", 0, (class_plan,), (2, 3), 3, ("b0", "b1", "b2"))
    return dataset, list(class_samples(dataset, config, plan, class_plan))


@pytest.mark.parametrize("overlapping", [False, True])
def test_class_samples_write_base_and_pasted_instances(overlapping):
    dataset, samples = _compose(overlapping)
    assert len(samples) == 6
    saw_hidden = saw_occluded_base = saw_clipped = False
    for sample in samples:
        meta = sample.meta
        assert set(meta) == OLD_META_KEYS | {"instances"}
        assert meta["class_names"] == {str(c): dataset.classes()[c] for c in present_classes(sample.label)}
        instances = sample_instances(sample)
        assert [instance_to_json(i) for i in instances] == meta["instances"]
        check_label_agreement(sample.label, instances, sample.key)
        pasted_pixels = sample.label == 1  # the base images hold no class 1: these are exactly the pasted pixels
        base = dataset.load(meta["base_image_id"])
        visible = [(i.class_id, i.mask & (base.label == i.class_id)) for i in base.instances]
        expected_base = [(c, m & ~pasted_pixels, False) for c, m in visible]
        expected_base = [e for e in expected_base if e[1].any()]
        n_base = len(expected_base)
        _assert_same(instances[:n_base], expected_base)
        saw_occluded_base |= any((m & pasted_pixels).any() for _, m in visible)
        saw_clipped |= any((i.mask & (base.label != i.class_id)).any() for i in base.instances)
        pasted = instances[n_base:]
        shown = [o for o in meta["objects"] if o["visible_pixels"] > 0]
        saw_hidden |= len(shown) < len(meta["objects"])
        # one pasted instance per object with visible pixels, in painting order, disjoint, covering the pasted pixels
        assert [i.class_id for i in pasted] == [1] * len(shown)
        assert [i.area for i in pasted] == [o["visible_pixels"] for o in shown]
        assert sum(i.area for i in pasted) == int(pasted_pixels.sum())
        assert np.array_equal(np.logical_or.reduce([i.mask for i in pasted]), pasted_pixels)
    # the checks above covered pasted-over base pixels, hidden objects and (overlapping) annotations clipped
    assert saw_occluded_base and saw_hidden and saw_clipped == overlapping


# --- shards and sample_instances ---------------------------------------------------------------------------------


def test_instances_survive_shards_and_read_with_plain_tar_json_pycocotools(tmp_path):
    _, samples = _compose(n=3)
    run = tmp_path / "run"
    with RunWriter(str(run), shard_prefix="c0001") as writer:
        for sample in samples:
            writer.write(sample)
        writer.finish({"n": len(samples)})
    (shard,) = sorted(Path(run, "shards").glob("*.tar"))
    with tarfile.open(shard) as tar:
        stored = {m.name[: -len(".json")]: json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")}
    assert sorted(stored) == sorted(s.key for s in samples)
    reader = RunReader(str(run))
    for sample in samples:
        records = stored[sample.key]["instances"]
        expected = sample_instances(sample)
        assert len(records) == len(expected) >= 2
        for record, inst in zip(records, expected):
            mask = mask_utils.decode(record["segmentation"])  # str counts, as stored: no conversion needed
            assert mask.shape == (24, 24) and np.array_equal(mask.astype(bool), inst.mask)
            assert record["class_id"] == inst.class_id and record["area"] == int(mask.sum())
            x, y, w, h = record["bbox"]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert (x, y, w, h) == (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0])
        back = sample_instances(reader.get(sample.key))
        _assert_same(back, [(i.class_id, i.mask, i.iscrowd) for i in expected])


def _stored(meta, hw=(8, 10)):
    return ShardSample("fake-f0-c0001-real-00000", np.zeros((*hw, 3), np.uint8), np.zeros(hw, np.int32), meta)


def test_sample_instances_round_trip_and_absent_key():
    a = _box((8, 10), slice(1, 4), slice(2, 9))
    crowd = _box((8, 10), slice(5, 8), slice(0, 3))
    records = [instance_to_json(Instance(4, a)), instance_to_json(Instance(9, crowd, iscrowd=True))]
    got = sample_instances(_stored({"instances": json.loads(json.dumps(records))}))
    _assert_same(got, [(4, a, False), (9, crowd, True)])
    assert sample_instances(_stored({"dataset": "fake"})) == []
    assert sample_instances(_stored({"instances": []})) == []


@pytest.mark.parametrize(
    "value, message",
    [
        (None, r"meta\['instances'\] must be a list of instance records, got NoneType"),
        ([{"class_id": 1}], r"instances\[0\]: expected an object with class_id and segmentation"),
        ([{"class_id": 1, "segmentation": {"size": [8, 10], "counts": 5}}], r"instances\[0\]: segmentation is not"),
        (
            [{"class_id": 1, "segmentation": encode_rle(np.ones((8, 9), bool))}],
            r"mask is \(8, 9\), the image is \(8, 10\)",
        ),
        (
            [{"class_id": 0, "segmentation": encode_rle(np.ones((8, 10), bool))}],
            r"class_id must be a positive int, got 0",
        ),
        ([{"class_id": 2.0, "segmentation": encode_rle(np.ones((8, 10), bool))}], r"class_id must be a positive int"),
        (
            [{"class_id": 2, "iscrowd": 2, "segmentation": encode_rle(np.ones((8, 10), bool))}],
            r"iscrowd must be 0 or 1",
        ),
        ([{"class_id": 2, "segmentation": encode_rle(np.zeros((8, 10), bool))}], r"instances\[0\]: the mask is empty"),
        ([{"class_id": 2, "area": 3, "segmentation": encode_rle(np.ones((8, 10), bool))}], r"area 3 differs .* 80"),
    ],
)
def test_sample_instances_reject_bad_records_naming_the_sample(value, message):
    with pytest.raises(InstanceError, match=r"sample 'fake-f0-c0001-real-00000'.*" + message):
        sample_instances(_stored({"instances": value}))
