"""GFSS protocol and metrics (GAPS / PIFS) against hand-computed cases: streams, seeds, class maps, supports, IoU."""

import numpy as np
import pytest

from maskforge.eval.gfss_metrics import GfssAccumulator, fold_mean, harmonic_mean, pifs_summary, seed_summary
from maskforge.eval.gfss_protocol import (
    ClassMap,
    GfssProtocolError,
    gaps_run_seeds,
    novel_only_candidates,
    select_supports,
    task_stream,
    vrfs_probability,
)


def test_task_stream_sorts_and_groups_the_novel_classes():
    assert task_stream((16, 1, 11, 6), 1) == [(1,), (6,), (11,), (16,)]
    assert task_stream((16, 1, 11, 6), 3) == [(1, 6, 11), (16,)]  # the last group may be shorter
    assert task_stream(range(1, 21), 5)[1] == (6, 7, 8, 9, 10)
    with pytest.raises(GfssProtocolError, match="classes_per_step must be at least 1, got 0"):
        task_stream((1, 6), 0)
    with pytest.raises(GfssProtocolError, match="distinct"):
        task_stream((1, 1), 1)


def test_gaps_run_seeds_reproduce_the_legacy_global_stream():
    seeds = gaps_run_seeds(3)
    assert seeds == np.random.RandomState(4321).randint(0, 99999, 3).tolist()
    assert seeds == [9021, 2296, 88250]  # hard values: a change of numpy's legacy stream would show here
    assert gaps_run_seeds(1) == [9021] and all(type(s) is int for s in seeds)
    assert gaps_run_seeds(3, master_seed=1) != seeds


def test_class_map_to_model_masks_unlearned_novel_and_ignore():
    cmap = ClassMap(base=(2, 5)).with_novel([7])
    assert cmap.num_classes == 4
    assert cmap.model_ids() == {0: 0, 2: 1, 5: 2, 7: 3}
    assert cmap.base_model_ids() == (0, 1, 2) and cmap.learned_novel_model_ids() == (3,)
    label = np.array([[0, 2, 5], [7, 1, -1], [255, 5, 2]], dtype=np.int32)
    model = cmap.to_model(label, fold_novel=(1, 7))
    assert model.dtype == np.int64
    # 1 is a novel class of the fold not learned yet -> -1 (PIFS masking); -1 and 255 are ignore
    assert model.tolist() == [[0, 1, 2], [3, -1, -1], [-1, 2, 1]]
    assert cmap.to_dataset(model).tolist() == [[0, 2, 5], [7, -1, -1], [-1, 5, 2]]
    assert cmap.to_dataset(np.array([3, 0, 1])).tolist() == [7, 0, 2]


def test_class_map_novel_ids_follow_learning_order_and_reject_bad_input():
    cmap = ClassMap(base=(2, 5)).with_novel([11]).with_novel([7])
    assert cmap.novel == (11, 7) and cmap.model_ids()[11] == 3 and cmap.model_ids()[7] == 4
    with pytest.raises(GfssProtocolError, match=r"classes \[5\] are already base"):
        cmap.with_novel([5])
    with pytest.raises(GfssProtocolError, match=r"classes \[7\] are already base or learned"):
        cmap.with_novel([7])
    with pytest.raises(GfssProtocolError, match="ascending"):
        ClassMap(base=(5, 2))
    with pytest.raises(GfssProtocolError, match="label value 9"):
        cmap.to_model(np.array([[0, 9]]), fold_novel=(1, 7, 11))
    with pytest.raises(GfssProtocolError, match=r"model ids must be in 0\.\.4"):
        cmap.to_dataset(np.array([5]))


def test_novel_only_candidates_drop_images_with_another_novel_class():
    index = {1: ["i3", "i1", "i2"], 6: ["i2", "i4"], 11: ["i5"], 3: ["i3"]}
    # i2 also holds novel class 6; i3 holds base class 3, which is allowed
    assert novel_only_candidates(index, (1, 6, 11, 16), 1) == ["i1", "i3"]
    assert novel_only_candidates(index, (1, 6, 11, 16), 6) == ["i4"]
    with pytest.raises(GfssProtocolError, match="no entry for novel class 16"):
        novel_only_candidates(index, (1, 6, 11, 16), 16)
    with pytest.raises(GfssProtocolError, match="class 3 is not one of the fold's novel"):
        novel_only_candidates(index, (1, 6, 11, 16), 3)


def test_select_supports_skips_one_pixel_images_and_fails_when_too_few():
    counts = {"a": 1, "b": 5, "c": 3, "d": 0}
    for seed in range(8):
        chosen = select_supports(["d", "c", "b", "a"], 2, np.random.default_rng(seed), counts.__getitem__, 7)
        assert sorted(chosen) == ["b", "c"]
    first = select_supports(list("abcd"), 1, np.random.default_rng(3), lambda _: 10, 7)
    assert first == select_supports(list("dcba"), 1, np.random.default_rng(3), lambda _: 10, 7)  # order-free
    with pytest.raises(GfssProtocolError, match=r"class 7 \(cat\) has 2 usable .* among 4 candidates; 3 shots"):
        select_supports(list("abcd"), 3, np.random.default_rng(0), counts.__getitem__, 7, "cat")


def test_vrfs_probability_known_cases():
    # PASCAL 5-shot, first step: t = 1/16, f_n = 5/500, r = sqrt(6.25) = 2.5, p = 5 / 8.5
    assert vrfs_probability(15, 1, 5) == pytest.approx(0.588, abs=1e-3)
    assert vrfs_probability(15, 1, 5) == pytest.approx(5 / 8.5)
    assert vrfs_probability(15, 1, 500) == pytest.approx(0.5)  # r clamps at 1
    assert vrfs_probability(15, 1, 5, buffer_size=5) == pytest.approx(0.5)
    with pytest.raises(GfssProtocolError, match="shots >= 1"):
        vrfs_probability(15, 1, 0)


def test_accumulator_confusion_iou_and_scores_by_hand():
    acc = GfssAccumulator(3)  # 0 background, 1 base, 2 learned novel
    target = np.array([[0, 0, 1], [1, 2, -1]])
    pred = np.array([[0, 1, 1], [2, 2, 2]])
    acc.add(pred, target)
    # the excluded pixel (1, 2) is predicted 2 but must not count
    assert acc.confusion.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    iou = acc.class_iou()
    # class 0: 1 / (2 + 1 - 1); class 1: 1 / (2 + 2 - 1); class 2: 1 / (1 + 2 - 1)
    assert iou.tolist() == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    scores = acc.scores([0, 1], [2])
    assert scores["base_miou"] == pytest.approx((1 / 2 + 1 / 3) / 2)  # background included
    assert scores["novel_miou"] == pytest.approx(1 / 2)
    assert scores["hm"] == pytest.approx(5 / 11)
    assert scores["class_iou"] == pytest.approx({"0": 1 / 2, "1": 1 / 3, "2": 1 / 2})
    base_stage = acc.scores([0, 1], [])
    assert base_stage["novel_miou"] is None and base_stage["hm"] is None


def test_accumulator_sums_over_the_split_and_scores_absent_classes_zero_as_gaps():
    acc = GfssAccumulator(4)
    acc.add(np.array([[1, 1]]), np.array([[1, 0]]))  # class 1: inter 1, union 2
    acc.add(np.array([[1, 1, 1, 0]]), np.array([[1, 1, 1, 255]]))  # class 1: inter 3, union 3; 255 ignored
    iou = acc.class_iou()
    assert iou[1] == pytest.approx(4 / 5)  # split-wide 4 / 5, not the per-image mean (1/2 + 1) / 2
    assert iou[0] == 0.0  # one target pixel, never predicted: 0
    assert iou[2] == 0.0 and iou[3] == 0.0  # absent from target and prediction: 0 (GAPS), not nan
    assert acc.absent() == [2, 3]
    acc.add(np.array([[3]]), np.array([[-1]]))  # excluded: class 3 stays absent
    acc.add(np.array([[3]]), np.array([[0]]))  # predicted only: present, IoU 0
    assert acc.absent() == [2]
    acc.add(np.array([[2, 2]]), np.array([[2, 1]]))  # class 2: inter 1, union 2
    scores = acc.scores([0, 1], [2, 3])
    assert scores["novel_miou"] == pytest.approx((1 / 2 + 0) / 2)
    # an absent class is kept in its group's mean with IoU 0
    fresh = GfssAccumulator(4)
    fresh.add(np.array([[1, 1, 3]]), np.array([[1, 1, 3]]))  # classes 0 and 2 absent
    out = fresh.scores([0, 1], [2, 3])
    assert out["base_miou"] == pytest.approx(0.5)  # (0 + 1) / 2, GAPS's mean; a nan-mean would say 1.0
    assert out["novel_miou"] == pytest.approx(0.5) and out["absent"] == [0, 2]
    assert out["class_iou"] == pytest.approx({"0": 0.0, "1": 1.0, "2": 0.0, "3": 1.0})


def _gaps_style_iou(preds, targets, num_classes, masked=()):
    """An independent reference in GAPS's manner (its metric code, not ours): per image, drop ignore and masked
    target pixels, histogram intersections, predictions and targets over classes, sum over images, then
    intersection / (union + 1e-10) for every class."""
    inter = np.zeros(num_classes)
    area_p = np.zeros(num_classes)
    area_t = np.zeros(num_classes)
    for p, t in zip(preds, targets):
        keep = (t != -1) & ~np.isin(t, masked)
        p, t = p[keep], t[keep]
        inter += np.bincount(p[p == t], minlength=num_classes)[:num_classes]
        area_p += np.bincount(p, minlength=num_classes)[:num_classes]
        area_t += np.bincount(t, minlength=num_classes)[:num_classes]
    return inter / (area_p + area_t - inter + 1e-10)


def test_accumulator_matches_a_gaps_style_reference_on_seeded_maps_with_an_absent_class():
    rng = np.random.default_rng(11)
    num_classes = 7  # class 5 never appears in target nor prediction: it must score 0 and stay in the mean
    labels = [c for c in range(num_classes) if c != 5]
    preds = [rng.choice(labels, size=(16, 16)) for _ in range(5)]
    targets = [np.where(rng.random((16, 16)) < 0.6, p, rng.choice(labels, size=(16, 16))) for p in preds]
    for t in targets:
        t[rng.random(t.shape) < 0.05] = -1
    acc = GfssAccumulator(num_classes)
    for p, t in zip(preds, targets):
        acc.add(p, t)
    want = _gaps_style_iou(preds, targets, num_classes)
    assert want[5] == 0.0
    np.testing.assert_allclose(acc.class_iou(), want, atol=1e-12)
    scores = acc.scores([0, 1, 2, 3], [4, 5, 6])
    assert scores["base_miou"] == pytest.approx(float(np.mean(want[:4])), abs=1e-6)
    assert scores["novel_miou"] == pytest.approx(float(np.mean(want[4:])), abs=1e-6)  # class 5 counted as 0


def test_accumulator_rejects_bad_inputs():
    acc = GfssAccumulator(3)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 2\) differs from target \(2, 3\)"):
        acc.add(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"prediction values must be in 0\.\.2, got \[3\]"):
        acc.add(np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match=r"target values must be in 0\.\.2 or ignore .*, got \[5\]"):
        acc.add(np.array([0]), np.array([5]))
    acc.add(np.array([0]), np.array([0]))
    assert acc.scores([0], [1, 2])["novel_miou"] == 0.0  # both absent: 0, as GAPS (no longer an error)


def test_harmonic_mean():
    assert harmonic_mean(0.6, 0.3) == pytest.approx(0.4)
    assert harmonic_mean(0.0, 0.7) == 0.0 and harmonic_mean(0.7, 0.0) == 0.0


def test_pifs_and_seed_summaries_by_hand():
    run_a = pifs_summary([{"base_miou": 0.6, "novel_miou": 0.2}, {"base_miou": 0.4, "novel_miou": 0.4}])
    run_b = pifs_summary([{"base_miou": 0.7, "novel_miou": 0.1}, {"base_miou": 0.5, "novel_miou": 0.5}])
    # hm is the HM of the averages (0.5, 0.3) = 0.375, not the mean of the per-step HMs (0.3 + 0.4) / 2 = 0.35
    assert run_a == pytest.approx(
        {
            "base_miou": 0.5,
            "novel_miou": 0.3,
            "hm": 0.375,
            "base_miou_last": 0.4,
            "novel_miou_last": 0.4,
            "hm_last": 0.4,
        }
    )
    assert run_b["hm"] == pytest.approx(0.4) and run_b["hm_last"] == pytest.approx(0.5)
    summary = seed_summary([run_a, run_b])
    assert summary["runs"] == 2
    assert summary["base_miou"] == pytest.approx(0.55) and summary["base_miou_std"] == pytest.approx(0.05)  # ddof 0
    assert summary["novel_miou"] == pytest.approx(0.3) and summary["novel_miou_std"] == pytest.approx(0.0)
    # Table 1: HM of the mean base (0.55) and mean novel (0.3) = 0.388..., not the mean of the run HMs (0.3875)
    assert summary["hm"] == pytest.approx(2 * 0.55 * 0.3 / 0.85) and summary["hm_std"] == pytest.approx(0.0125)
    assert summary["hm"] != pytest.approx(0.3875, abs=1e-4)
    # last step: base (0.4, 0.5) -> 0.45, novel (0.4, 0.5) -> 0.45, HM 0.45
    assert summary["hm_last"] == pytest.approx(0.45) and summary["hm_last_std"] == pytest.approx(0.05)
    assert len(summary) == 6 * 2 + 1
    with pytest.raises(ValueError, match="step 0 has no 'novel_miou'"):
        pifs_summary([{"base_miou": 0.5, "novel_miou": None}])
    with pytest.raises(ValueError, match="run 1 has keys"):
        seed_summary([run_a, {"base_miou": 0.5}])


def test_fold_mean_is_the_hm_of_mean_base_and_mean_novel():
    folds = [
        {
            "base_miou": 0.6,
            "novel_miou": 0.2,
            "hm": 0.3,
            "base_miou_last": 0.5,
            "novel_miou_last": 0.1,
            "hm_last": 1 / 6,
        },
        {"base_miou": 0.4, "novel_miou": 0.4, "hm": 0.4, "base_miou_last": 0.3, "novel_miou_last": 0.3, "hm_last": 0.3},
    ]
    out = fold_mean(folds)
    assert out["folds"] == 2 and out["base_miou"] == pytest.approx(0.5) and out["novel_miou"] == pytest.approx(0.3)
    assert out["hm"] == pytest.approx(0.375)  # HM(0.5, 0.3), not the mean of the fold HMs (0.35)
    assert out["hm_last"] == pytest.approx(2 * 0.4 * 0.2 / 0.6) and out["base_miou_std"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least one fold"):
        fold_mean([])
