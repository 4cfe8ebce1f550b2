"""K-shot sampling is deterministic; the base set holds no novel pixel; the base subset is class-balanced."""

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskforge.eval.datasets.config import ToyConfig
from maskforge.eval.datasets.toy import ToyDataset
from maskforge.eval.episodes import EpisodeError, balanced_base_subset, base_set, sample_shots
from maskforge.eval.folds import toy_fold

INDEX = {1: ["a", "b", "c", "d", "e"], 2: ["c", "f"], 3: ["g"], 4: []}


def test_shots_are_deterministic_and_keyed_on_every_part():
    first = sample_shots(INDEX, "toy", 0, 1, 2, seed=0)
    assert first == sample_shots(INDEX, "toy", 0, 1, 2, seed=0)
    assert len(set(first)) == 2 and set(first) <= set(INDEX[1])
    draws = {tuple(sample_shots(INDEX, "toy", 0, 1, 2, seed=s)) for s in range(20)}
    assert len(draws) > 3  # the seed matters
    other_fold = {tuple(sample_shots(INDEX, "toy", f, 1, 2, seed=0)) for f in range(4)}
    assert len(other_fold) > 1  # so does the fold


def test_shots_do_not_depend_on_listing_order():
    shuffled = {1: list(reversed(INDEX[1]))}
    assert sample_shots(shuffled, "toy", 0, 1, 3, 7) == sample_shots(INDEX, "toy", 0, 1, 3, 7)


def test_too_few_shots_is_an_error():
    with pytest.raises(EpisodeError, match="class 2 has 2 image"):
        sample_shots(INDEX, "toy", 0, 2, 3, 0)
    with pytest.raises(EpisodeError, match="class id 9"):
        sample_shots(INDEX, "toy", 0, 9, 1, 0)


def test_base_set_excludes_every_image_with_a_novel_class():
    ids = list("abcdefgh")
    assert base_set(ids, INDEX, novel=[2, 3]) == ["a", "b", "d", "e", "h"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world_seed=st.integers(0, 10_000), fold=st.integers(0, 3))
def test_no_novel_pixel_in_any_base_image(world_seed, fold):
    ds = ToyDataset(ToyConfig(seed=world_seed, image_size=48, n_train=40, n_val=4))
    f = toy_fold(fold)
    index = ds.class_index("train")
    d_base = base_set(ds.image_ids("train"), index, f.novel)
    assert d_base, "a 40-image toy split always has some base images"
    for image_id in d_base:
        label = ds.load(image_id).label
        assert not any((label == c).any() for c in f.novel), image_id
    subset = balanced_base_subset(d_base, index, f.base, 25, "toy", fold, seed=0)
    assert set(subset) <= set(d_base)


def test_balanced_subset_spreads_over_classes_and_is_deterministic():
    index = {1: [f"x{i}" for i in range(50)], 2: [f"y{i}" for i in range(50)], 3: ["z0", "z1"]}
    ids = [i for v in index.values() for i in v]
    subset = balanced_base_subset(ids, index, [1, 2, 3], 20, "d", 0, seed=1)
    assert subset == balanced_base_subset(ids, index, [1, 2, 3], 20, "d", 0, seed=1)
    counts = Counter(s[0] for s in subset)
    assert len(subset) == 20 and counts["z"] == 2 and counts["x"] == counts["y"] == 9
    with pytest.raises(EpisodeError, match="no image of any base class"):
        balanced_base_subset(["q"], index, [1], 5, "d", 0, 0)


def test_train_episodes_draw_n_distinct_supports_and_check_bounds():
    from maskforge.eval.hsnet_episodes import TrainEpisodes

    index = {1: [f"a{i}" for i in range(5)], 2: [f"b{i}" for i in range(4)]}
    stream = TrainEpisodes(index, (1, 2), seed=3, what="unit", max_shots=3)
    for shots in (1, 2, 3, 3, 2):
        ep = stream.next(shots)
        assert len(ep.support_ids) == shots == len(set(ep.support_ids)) and ep.query_id not in ep.support_ids
        assert {ep.query_id, *ep.support_ids} <= set(index[ep.class_id])
    with pytest.raises(EpisodeError, match=r"shots must be in \[1, 3\], got 4"):
        stream.next(4)
    with pytest.raises(EpisodeError, match="class 2 has 4 image"):  # 4 supports + a query need 5 images
        TrainEpisodes(index, (1, 2), seed=3, what="unit", max_shots=4)
    one_shot = [TrainEpisodes(index, (1, 2), seed=3, what="unit").next() for _ in range(1)]
    assert one_shot[0] == TrainEpisodes(index, (1, 2), seed=3, what="unit", max_shots=3).next(1)  # same stream
