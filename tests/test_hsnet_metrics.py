"""HSNet metrics and the k-shot vote against hand-computed cases (ignore pixels, empty classes, vote peaks)."""

import numpy as np
import pytest
import torch

from maskforge.eval.episodes import EpisodeError
from maskforge.eval.hsnet_episodes import TrainEpisodes, eval_episodes
from maskforge.eval.metrics import IoUAccumulator, episode_areas
from maskforge.models.hsnet.segmenter import vote_masks


def test_episode_areas_by_hand_with_ignore():
    pred = np.array([[1, 1, 0], [0, 0, 1]], bool)
    target = np.array([[1, 0, 0], [255, -1, 1]])
    inter, union = episode_areas(pred, target)
    # valid pixels: (0,0) p1 t1, (0,1) p1 t0, (0,2) p0 t0, (1,2) p1 t1; the two ignore pixels never count
    assert inter.tolist() == [1, 2]  # background: (0,2); foreground: (0,0), (1,2)
    assert union.tolist() == [2, 3]  # background: (0,1), (0,2); foreground: (0,0), (0,1), (1,2)


def test_episode_areas_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        episode_areas(np.zeros((2, 2), bool), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="target values must be 0, 1 or ignore"):
        episode_areas(np.zeros((2, 2), bool), np.full((2, 2), 3))


def test_accumulator_miou_and_fb_iou_by_hand():
    acc = IoUAccumulator([5, 7, 9])
    # class 5, two episodes: (fg inter 1, union 2) and (fg inter 2, union 2) -> accumulated 3/4, not mean(1/2, 1)
    acc.add(5, np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0]))
    acc.add(5, np.array([1, 1, 0, 0], bool), np.array([1, 1, 0, 0]))
    # class 7: prediction empty, target one pixel -> fg IoU 0; 255 pixel ignored
    acc.add(7, np.array([0, 0, 0, 1], bool), np.array([1, 0, 0, 255]))
    # class 9: no episode at all (an empty class) -> 0, as HSNet's mean over the fold's classes
    cls = acc.class_iou()
    assert cls[5] == pytest.approx(3 / 4)
    assert cls[7] == 0.0 and cls[9] == 0.0
    assert acc.miou() == pytest.approx((3 / 4 + 0 + 0) / 3)
    # pooled: bg inter = 2 + 2 + 2 = 6, bg union = 3 + 2 + 3 = 8; fg inter = 3 + 0 = 3, fg union = 4 + 1 = 5
    assert acc.fb_iou() == pytest.approx((6 / 8 + 3 / 5) / 2)
    summary = acc.summary()
    assert summary["episodes"] == 3 and summary["class_iou"]["5"] == pytest.approx(0.75)


def test_accumulator_rejects_a_class_outside_the_fold():
    acc = IoUAccumulator([1, 2])
    with pytest.raises(ValueError, match="class 3 is not one of the fold's classes"):
        acc.add(3, np.zeros(4, bool), np.zeros(4))


def test_all_ignore_episode_counts_nothing():
    acc = IoUAccumulator([1])
    acc.add(1, np.ones((2, 2), bool), np.full((2, 2), -1))
    assert acc.inter.sum() == 0 and acc.union.sum() == 0
    assert acc.miou() == 0.0 and acc.fb_iou() == 0.0


def test_vote_rule_divides_by_each_images_peak_vote():
    # 3 shots, 2 images of 1x4 pixels
    shots = torch.tensor(
        [
            [[[1, 1, 0, 0]], [[1, 0, 0, 0]]],
            [[[1, 0, 0, 0]], [[0, 0, 0, 0]]],
            [[[1, 1, 1, 0]], [[0, 0, 0, 0]]],
        ],
        dtype=torch.bool,
    )
    out = vote_masks(shots)
    # image 0: votes 3,2,1,0; peak 3 -> 1, 2/3, 1/3, 0 -> fg where >= 0.5
    assert out[0, 0].tolist() == [True, True, False, False]
    # image 1: votes 1,0,0,0; peak 1 -> one vote is enough (not ">= k/2")
    assert out[1, 0].tolist() == [True, False, False, False]


def test_vote_rule_with_no_vote_and_one_shot():
    none = torch.zeros((4, 1, 2, 2), dtype=torch.bool)
    assert not vote_masks(none).any()  # peak clamped to 1: 0 / 1 < 0.5
    one = torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.bool)
    assert vote_masks(one).tolist() == one[0].tolist()
    two = torch.tensor([[[[1, 0]]], [[[0, 1]]]], dtype=torch.bool)  # a tie at peak 1 keeps both pixels
    assert vote_masks(two)[0, 0].tolist() == [True, True]
    with pytest.raises(ValueError, match=r"\(K, N, H, W\)"):
        vote_masks(torch.zeros((2, 2), dtype=torch.bool))


def test_eval_episodes_are_deterministic_and_valid():
    index = {1: ["a", "b", "c"], 2: ["d", "e"], 3: ["f", "g", "h", "i"]}
    first = eval_episodes(index, [1, 3], 50, 2, 0, "toy", 0)
    assert first == eval_episodes(index, [1, 3], 50, 2, 0, "toy", 0)
    assert first != eval_episodes(index, [1, 3], 50, 2, 1, "toy", 0)
    for ep in first:
        assert ep.class_id in (1, 3)
        assert ep.query_id in index[ep.class_id] and ep.query_id not in ep.support_ids
        assert len(set(ep.support_ids)) == 2 and set(ep.support_ids) <= set(index[ep.class_id])
    assert {ep.class_id for ep in first} == {1, 3}
    per_image = eval_episodes(index, [1, 2], 999, 1, 0, "fss", 0, per_image=True)
    assert [(e.class_id, e.query_id) for e in per_image] == [(1, "a"), (1, "b"), (1, "c"), (2, "d"), (2, "e")]
    with pytest.raises(EpisodeError, match="class 2 has 2 image"):
        eval_episodes(index, [2], 5, 2, 0, "toy", 0)


def test_train_episodes_draw_synthetic_supports_but_real_queries():
    index = {1: ["a", "b"], 2: ["c", "d"]}
    stream = TrainEpisodes(index, [1, 2], 0, "toy", {1: ["syn:x", "syn:y"]})
    eps = [stream.next() for _ in range(200)]
    assert all(not e.query_id.startswith("syn:") for e in eps)
    supports = {e.support_ids[0] for e in eps if e.class_id == 1}
    assert {"syn:x", "syn:y"} <= supports
    assert all(e.support_ids[0] != e.query_id for e in eps)
