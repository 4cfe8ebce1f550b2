"""GFSS protocol and metrics (GAPS / PIFS) against hand-computed cases: streams, seeds, class maps, supports, IoU."""

import numpy as np
import pytest

from maskforge.eval.gfss_metrics import GfssAccumulator, harmonic_mean, pifs_summary, seed_summary
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


def test_accumulator_sums_over_the_split_and_skips_absent_classes():
    acc = GfssAccumulator(4)
    acc.add(np.array([[1, 1]]), np.array([[1, 0]]))  # class 1: inter 1, union 2
    acc.add(np.array([[1, 1, 1, 0]]), np.array([[1, 1, 1, 255]]))  # class 1: inter 3, union 3; 255 ignored
    iou = acc.class_iou()
    assert iou[1] == pytest.approx(4 / 5)  # split-wide 4 / 5, not the per-image mean (1/2 + 1) / 2
    assert iou[0] == 0.0  # one target pixel, never predicted: 0, not skipped
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    acc.add(np.array([[3]]), np.array([[-1]]))  # excluded: class 3 stays absent
    acc.add(np.array([[3]]), np.array([[0]]))  # predicted only: IoU 0, no longer nan
    iou = acc.class_iou()
    assert np.isnan(iou[2]) and iou[3] == 0.0
    scores = acc.scores([0, 1], [2, 3])
    assert scores["novel_miou"] == 0.0 and scores["hm"] == 0.0  # class 2 skipped, class 3 counted as 0
    assert set(scores["class_iou"]) == {"0", "1", "3"}


def test_accumulator_rejects_bad_inputs():
    acc = GfssAccumulator(3)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 2\) differs from target \(2, 3\)"):
        acc.add(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"prediction values must be in 0\.\.2, got \[3\]"):
        acc.add(np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match=r"target values must be in 0\.\.2 or ignore .*, got \[5\]"):
        acc.add(np.array([0]), np.array([5]))
    acc.add(np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="no novel class"):
        acc.scores([0], [1, 2])


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
    assert summary["hm"] == pytest.approx(0.3875) and summary["hm_std"] == pytest.approx(0.0125)
    assert summary["hm_last"] == pytest.approx(0.45) and summary["hm_last_std"] == pytest.approx(0.05)
    assert len(summary) == 6 * 2 + 1
    with pytest.raises(ValueError, match="step 0 has no 'novel_miou'"):
        pifs_summary([{"base_miou": 0.5, "novel_miou": None}])
    with pytest.raises(ValueError, match="run 1 has keys"):
        seed_summary([run_a, {"base_miou": 0.5}])
