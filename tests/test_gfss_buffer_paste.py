"""GAPS replay buffer (uniform_interval) and guided copy-paste: intervals, context sets, paste geometry, vRFS."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskforge.tasks.gfss.buffer import (
    ReplayBufferError,
    buffer_score,
    interval_candidates,
    intervals_per_class,
    uniform_interval_buffer,
)
from maskforge.tasks.gfss.copy_paste import (
    CopyPasteError,
    PasteObject,
    SynthesisPlan,
    context_similar,
    cut_object,
    paste,
    plan_sample,
    synthesize,
)

# Class 1: i00..i09 with scores 0..9 -> with m = 4, np.array_split gives intervals [0-2], [3-5], [6-7], [8-9].
# Class 2: j00..j09 with scores 9..0 (reversed), so its intervals are by j index [9-7], [6-4], [3-2], [1-0].
I_INTERVALS = {f"i{k:02d}": (1, iv) for iv, ks in enumerate([(0, 1, 2), (3, 4, 5), (6, 7), (8, 9)]) for k in ks}
J_INTERVALS = {f"j{k:02d}": (2, iv) for iv, ks in enumerate([(9, 8, 7), (6, 5, 4), (3, 2), (1, 0)]) for k in ks}
INTERVAL_OF = {**I_INTERVALS, **J_INTERVALS}


def _scores():
    order = [3, 7, 0, 9, 1, 5, 8, 2, 6, 4]  # unsorted input: the rule must sort by score itself
    return {
        1: [(f"i{k:02d}", float(k)) for k in order],
        2: [(f"j{k:02d}", float(9 - k)) for k in order],
    }


def test_buffer_score_divides_by_pixel_fraction():
    assert buffer_score(0.5, 0.25) == 2.0
    assert buffer_score(-0.3, 1.0) == -0.3
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ReplayBufferError, match="pixel_fraction"):
            buffer_score(0.5, bad)


def test_intervals_per_class_matches_gaps_sizes():
    assert intervals_per_class(500, 15) == 66  # PASCAL
    assert intervals_per_class(500, 60) == 16  # COCO
    assert intervals_per_class(4, 2) == 4
    with pytest.raises(ReplayBufferError, match="smaller than the 3 base classes"):
        intervals_per_class(2, 3)


def test_candidates_take_one_image_per_interval():
    for seed in range(20):
        cands = interval_candidates(_scores(), 4, np.random.default_rng(seed))
        assert len(cands) == 8
        assert sorted(INTERVAL_OF[c] for c in cands) == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]


def test_buffer_picks_distinct_intervals_and_is_seeded():
    result = uniform_interval_buffer(_scores(), 4, np.random.default_rng(0))
    assert len(result) == 4 and result == sorted(result)
    assert len({INTERVAL_OF[r] for r in result}) == 4  # every id from a different interval
    assert uniform_interval_buffer(_scores(), 4, np.random.default_rng(0)) == result
    others = [uniform_interval_buffer(_scores(), 4, np.random.default_rng(s)) for s in range(1, 11)]
    assert any(o != result for o in others)


def test_small_class_gives_every_image_and_small_union_is_kept_whole():
    scores = {1: _scores()[1], 2: [("a", 0.2), ("b", 0.1)]}
    cands = interval_candidates(scores, 4, np.random.default_rng(0))
    assert {"a", "b"} <= set(cands) and len(cands) == 6
    # size 100 with 2 classes -> m = 100 > every class's count: each image is its own interval, all are kept
    assert uniform_interval_buffer(scores, 100, np.random.default_rng(0)) == sorted(
        [f"i{k:02d}" for k in range(10)] + ["a", "b"]
    )


def test_image_in_two_classes_counts_once():
    scores = {1: [("x", 0.1), ("y", 0.2)], 2: [("x", 0.5)]}
    assert uniform_interval_buffer(scores, 10, np.random.default_rng(0)) == ["x", "y"]


def test_buffer_rejects_bad_inputs():
    with pytest.raises(ReplayBufferError, match="scores is empty"):
        uniform_interval_buffer({}, 500, np.random.default_rng(0))
    with pytest.raises(ReplayBufferError, match="class 2 has no scored image"):
        uniform_interval_buffer({1: [("a", 1.0)], 2: []}, 10, np.random.default_rng(0))
    with pytest.raises(ReplayBufferError, match="more than once"):
        uniform_interval_buffer({1: [("a", 1.0), ("a", 2.0)]}, 10, np.random.default_rng(0))
    with pytest.raises(ReplayBufferError, match="expected finite"):
        uniform_interval_buffer({1: [("a", float("nan"))]}, 10, np.random.default_rng(0))


def test_context_similar_picks_most_similar_direction_not_largest_dot():
    buffer = np.array([[1.0, 0.0], [10.0, 10.0], [0.0, 1.0], [-1.0, 0.0]])
    # Unnormalised, row 1 would win for the first support (dot 11 vs 1); by cosine row 0 does.
    assert context_similar(np.array([[1.0, 0.1]]), buffer, top_frac=0.25).tolist() == [0]
    assert context_similar(np.array([[0.0, 5.0]]), buffer, top_frac=0.05).tolist() == [2]  # k = max(1, 0) = 1
    both = context_similar(np.array([[0.0, 5.0], [1.0, 0.1]]), buffer, top_frac=0.25)
    assert both.tolist() == [0, 2]
    assert context_similar(np.array([[1.0, 0.1]]), buffer, top_frac=0.5).tolist() == [0, 1]  # k = 2
    with pytest.raises(CopyPasteError, match="feature sizes differ"):
        context_similar(np.ones((1, 3)), buffer)
    with pytest.raises(CopyPasteError, match="buffer row 1 is zero"):
        context_similar(np.ones((1, 2)), np.array([[1.0, 0.0], [0.0, 0.0]]))


def _blobs():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    label = np.zeros((10, 12), np.int32)
    label[1:3, 1:3] = 3
    label[6:8, 8:11] = 3
    label[4, 4] = 5  # another class inside the box: not part of the mask
    label[9, 0] = -1
    return image, label


def test_cut_object_spans_every_region_of_the_class():
    image, label = _blobs()
    obj = cut_object(image, label, 3, "real", "img7")
    assert obj.image.shape == (7, 10, 3) and obj.mask.shape == (7, 10)
    assert np.array_equal(obj.image, image[1:8, 1:11])
    assert np.array_equal(obj.mask, label[1:8, 1:11] == 3)
    assert not obj.mask[3, 3]  # the other class's pixel
    assert (obj.class_id, obj.source, obj.origin) == (3, "real", "img7")


def test_cut_object_errors_name_origin_and_class():
    image, label = _blobs()
    with pytest.raises(CopyPasteError, match=r"'img7' has no pixel of class 9"):
        cut_object(image, label, 9, "real", "img7")
    with pytest.raises(CopyPasteError, match="'img8'.*differ in size"):
        cut_object(image[:5], label, 3, "real", "img8")
    with pytest.raises(CopyPasteError, match="source"):
        cut_object(image, label, 3, "fake", "img7")


def _asym_object(class_id=4):
    """An L-shaped object whose mirror image differs from it."""
    mask = np.zeros((4, 6), bool)
    mask[:, 0] = True
    mask[3, :] = True
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0] = np.arange(6, dtype=np.uint8) * 40  # a horizontal ramp, so flipping shows in the pixels
    image[..., 1] = 100
    return PasteObject(image, mask, class_id, "synthetic", "gen0")


def test_paste_writes_class_exactly_where_the_resized_mask_is():
    obj = _asym_object()
    base = np.full((24, 24, 3), 9, np.uint8)
    label = np.zeros((24, 24), np.int32)
    label[0, 0] = -1
    base_before, label_before = base.copy(), label.copy()
    for seed in range(8):
        out_image, out_label = paste(base, label, obj, np.random.default_rng(seed), scale=(2.0, 2.0))
        # the documented draw order: flip, scale, top, left
        twin = np.random.default_rng(seed)
        flip = twin.random() < 0.5
        twin.uniform(2.0, 2.0)
        top, left = int(twin.integers(0, 24 - 8 + 1)), int(twin.integers(0, 24 - 12 + 1))
        mask = obj.mask[:, ::-1] if flip else obj.mask
        big = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)  # nearest x2 duplicates every pixel
        expected = np.zeros((24, 24), bool)
        expected[top : top + 8, left : left + 12] = big
        assert np.array_equal(out_label == 4, expected)
        assert np.array_equal(out_label[~expected], label[~expected])
        assert np.array_equal(out_image[~expected], base[~expected])
        src = obj.image[:, ::-1] if flip else obj.image
        crop = np.asarray(Image.fromarray(np.ascontiguousarray(src)).resize((12, 8), Image.BILINEAR))
        assert np.array_equal(out_image[top : top + 8, left : left + 12][big], crop[big])
    assert np.array_equal(base, base_before) and np.array_equal(label, label_before)  # inputs untouched


def test_paste_flips_about_half_the_time():
    obj = _asym_object()
    base, label = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32)
    flips = 0
    for seed in range(40):
        _, out = paste(base, label, obj, np.random.default_rng(seed), scale=(1.0, 1.0))
        rows, cols = np.nonzero(out == 4)
        window = (out == 4)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        if np.array_equal(window, obj.mask[:, ::-1]):
            flips += 1
        else:
            assert np.array_equal(window, obj.mask)
    assert 8 <= flips <= 32


def test_paste_clamps_large_objects_and_keeps_one_pixel():
    full = PasteObject(np.full((20, 30, 3), 200, np.uint8), np.ones((20, 30), bool), 2, "real", "big")
    base, label = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.int32)
    for seed in range(5):
        _, out = paste(base, label, full, np.random.default_rng(seed), scale=(2.0, 2.0))
        rows, cols = np.nonzero(out == 2)
        # s = min(2, 10/20, 10/30) = 1/3 -> 7 x 10, inside the base
        assert (out == 2).sum() == 70 and cols.min() == 0 and cols.max() == 9 and rows.max() - rows.min() == 6
    tiny = PasteObject(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), 2, "real", "tiny")
    _, out = paste(base, label, tiny, np.random.default_rng(0), scale=(0.1, 0.1))
    assert (out == 2).sum() == 1
    _, out = paste(base, label, tiny, np.random.default_rng(0), scale=(1.0, 1.0), label_value=17)
    assert (out == 17).sum() == 16 and (out == 2).sum() == 0


def _pools(classes, per_class=3):
    return {
        c: [
            PasteObject(np.full((4, 4, 3), c, np.uint8), np.ones((4, 4), bool), c, "real", f"{c}-{i}")
            for i in range(per_class)
        ]
        for c in classes
    }


def test_plan_context_prob_one_draws_from_the_context_set():
    pools = _pools([11, 12])
    sets = {11: np.array([3, 40]), 12: np.array([7])}
    rng = np.random.default_rng(0)
    for _ in range(200):
        plan = plan_sample(rng, [11, 12], pools, 50, sets, p_vrfs=0.0, context_prob=1.0)
        assert plan.context and plan.base_index in sets[plan.class_id].tolist()
        assert plan.objects == ()  # p_vrfs 0: pure replay of the base image, as GAPS
    plans = [plan_sample(rng, [11, 12], pools, 50, {}, p_vrfs=0.0, context_prob=1.0) for _ in range(200)]
    assert not any(p.context for p in plans)  # no context set -> uniform over the buffer
    assert len({p.base_index for p in plans}) > 20
    with pytest.raises(CopyPasteError, match=r"outside \[0, 50\)"):
        plan_sample(rng, [11], pools, 50, {11: np.array([50])}, p_vrfs=0.0, context_prob=1.0)


def test_plan_vrfs_one_pastes_two_others_and_two_instances():
    pools = _pools([11, 12])
    rng = np.random.default_rng(1)
    for _ in range(50):
        plan = plan_sample(rng, [12], pools, 10, {}, p_vrfs=1.0)
        assert plan.class_id == 12
        assert [c for c, _ in plan.objects] == [11, 11, 12, 12]
        assert all(0 <= i < 3 for _, i in plan.objects)
    single = _pools([11])
    for _ in range(50):
        plan = plan_sample(rng, [11], single, 10, {}, p_vrfs=1.0)
        assert [c for c, _ in plan.objects] == [11, 11]  # no other class exists: only the 2 instances


def test_plan_frequencies_follow_p_and_are_seeded():
    pools = _pools([11, 12, 13])
    rng = np.random.default_rng(2)
    plans = [plan_sample(rng, [11, 12], pools, 100, {}, p_vrfs=0.3) for _ in range(2000)]
    two = np.mean([sum(c == p.class_id for c, _ in p.objects) == 2 for p in plans])
    others = np.mean([any(c != p.class_id for c, _ in p.objects) for p in plans])
    assert abs(two - 0.3) < 0.05 and abs(others - 0.3) < 0.05
    assert {p.class_id for p in plans} == {11, 12}
    a = [plan_sample(np.random.default_rng(5), [11, 12], pools, 100, {}, 0.5) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_plan_pure_replay_share_is_one_minus_p():
    """GAPS pastes 2 instances of the selected class with probability p and none otherwise; with a single novel
    class (no other-class branch) the share of samples without a novel object is 1 - p within binomial error."""
    pools = _pools([11])
    for p, seed in ((0.588, 3), (0.3, 4)):
        rng = np.random.default_rng(seed)
        n = 4000
        plans = [plan_sample(rng, [11], pools, 100, {}, p_vrfs=p) for _ in range(n)]
        counts = [len(plan.objects) for plan in plans]
        assert set(counts) == {0, 2}  # never a single instance
        empty = counts.count(0) / n
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(empty - (1 - p)) < 4 * sigma, (p, empty)
    # with another class learned, a pure replay needs both branches to miss: (1 - p)^2
    pools = _pools([11, 12])
    rng = np.random.default_rng(6)
    plans = [plan_sample(rng, [12], pools, 100, {}, p_vrfs=0.4) for _ in range(4000)]
    empty = np.mean([not plan.objects for plan in plans])
    assert abs(empty - 0.36) < 4 * np.sqrt(0.36 * 0.64 / 4000)


def test_plan_rejects_bad_inputs():
    pools = _pools([11])
    with pytest.raises(CopyPasteError, match=r"step classes \[12\] have no pool"):
        plan_sample(np.random.default_rng(0), [12], pools, 10, {}, 0.5)
    with pytest.raises(CopyPasteError, match="p_vrfs"):
        plan_sample(np.random.default_rng(0), [11], pools, 10, {}, 1.5)
    with pytest.raises(CopyPasteError, match=r"classes \[13\] are empty"):
        plan_sample(np.random.default_rng(0), [11], {**pools, 13: []}, 10, {}, 0.5)


def test_synthesize_pastes_in_order_selected_class_on_top():
    pools = {
        c: [PasteObject(np.full((6, 6, 3), c, np.uint8), np.ones((6, 6), bool), c, "real", f"{c}")] for c in (11, 12)
    }
    plan = SynthesisPlan(class_id=12, base_index=0, context=False, objects=((11, 0), (11, 0), (12, 0)))
    base, label = np.zeros((6, 6, 3), np.uint8), np.zeros((6, 6), np.int32)
    image, out = synthesize(plan, base, label, pools, np.random.default_rng(0), scale=(1.0, 1.0))
    assert (out == 12).all() and (image == 12).all()  # each object covers the whole base; the last wins
    _, out = synthesize(plan, base, label, pools, np.random.default_rng(0), scale=(1.0, 1.0), label_of=lambda c: c - 10)
    assert (out == 2).all() and (label == 0).all()
    # the same rng state gives the same sample as pasting one by one
    small = {c: [PasteObject(np.full((2, 3, 3), c, np.uint8), np.ones((2, 3), bool), c, "real", "s")] for c in (11, 12)}
    big_base, big_label = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.int32)
    got = synthesize(plan, big_base, big_label, small, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    want = (big_base, big_label)
    for c, _ in plan.objects:
        want = paste(*want, small[c][0], rng)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    with pytest.raises(CopyPasteError, match="object 1 of class 11 is missing"):
        synthesize(SynthesisPlan(11, 0, False, ((11, 1),)), base, label, pools, np.random.default_rng(0))


def test_plan_follows_the_documented_draw_order():
    pools = _pools([11])  # no other class: the vRFS "others" u is still drawn
    for seed in range(30):
        plan = plan_sample(np.random.default_rng(seed), [11], pools, 30, {}, p_vrfs=0.5, context_prob=0.9)
        twin = np.random.default_rng(seed)
        twin.integers(1)  # class
        twin.random()  # context decision (no context set: uniform base)
        base = int(twin.integers(30))
        twin.random()  # other-class decision
        n = 2 if twin.random() < 0.5 else 0
        assert plan == SynthesisPlan(11, base, False, tuple((11, int(twin.integers(3))) for _ in range(n)))
