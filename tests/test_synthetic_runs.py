"""A learner's synthetic run must be complete and of its dataset: every learner opens it through one check."""

from pathlib import Path

import pytest
from tiny import TOY_WORLD, toy_run

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.eval.folds import toy_fold
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.diffews.evaluate import eval_diffews
from maskforge.tasks.diffews.train import train_diffews
from maskforge.tasks.hsnet.config import load_hsnet_config
from maskforge.tasks.hsnet.eval import eval_hsnet
from maskforge.tasks.hsnet.train import train_hsnet
from maskforge.tasks.synthetic_runs import open_synthetic_run

ROOT = Path(__file__).resolve().parents[1]
FOLD = toy_fold(0)


def toy(**kw) -> DatasetConfig:
    """A toy dataset section on TOY_WORLD, fold 0 unless given."""
    return DatasetConfig(name="toy", toy=TOY_WORLD, **kw)


def test_mismatch_names_what_differs():
    ours = toy()
    same = {"name": "toy", "fold": 0, "toy": TOY_WORLD}
    assert ours.mismatch(same, fold=True, world=True) is None
    assert ours.mismatch({**same, "name": "pascal"}) == "is a run of dataset 'pascal'; expected a run of 'toy'"
    assert ours.mismatch(None) == "is a run of dataset None; expected a run of 'toy'"
    other_fold = {**same, "fold": 2}
    assert ours.mismatch(other_fold) is None  # folds only where asked (training on base classes takes any fold)
    assert ours.mismatch(other_fold, fold=True) == "is a run of toy fold 2; this config reads toy fold 0"
    bigger = {**same, "toy": {**TOY_WORLD, "image_size": 96}}
    assert ours.mismatch(bigger) is None  # the class ids are the same shapes in every toy world
    assert ours.mismatch(bigger, world=True).startswith("renders another toy world (seed 0, image_size 96, variety 1)")
    varied = {**same, "toy": {**TOY_WORLD, "variety": 3}}  # more looks per class: another world (issue 31)
    assert ours.mismatch(varied, world=True).startswith(
        f"renders another toy world (seed 0, image_size {TOY_WORLD['image_size']}, variety 3)"
    )
    assert ours.mismatch({**same, "toy": {**TOY_WORLD, "n_train": 500}}, world=True) is None  # split sizes: same world
    pascal = DatasetConfig(name="pascal", root="/data/VOC2012", fold=1)
    assert pascal.mismatch({"name": "pascal", "fold": 1, "root": "/elsewhere"}, fold=True, world=True) is None


def test_open_names_the_field_and_the_run(tmp_path):
    run = toy_run(str(tmp_path / "ok"), FOLD.novel)
    assert len(open_synthetic_run(run, "eval.synthetic_run", toy(), fold=True, world=True)) == 2 * len(FOLD.novel)
    with pytest.raises(ConfigError, match=r"^eval\.synthetic_run: .*nope: no such run folder"):
        open_synthetic_run(str(tmp_path / "nope"), "eval.synthetic_run", toy())
    (tmp_path / "partial").mkdir()
    with pytest.raises(ConfigError, match=r"^train\.synthetic_runs: .*partial"):
        open_synthetic_run(str(tmp_path / "partial"), "train.synthetic_runs", toy())
    coco = toy_run(str(tmp_path / "coco"), FOLD.novel, dataset="coco")
    with pytest.raises(ConfigError, match=r"^x\.y: .*coco is a run of dataset 'coco'; expected a run of 'toy'$"):
        open_synthetic_run(coco, "x.y", toy())


def test_a_corrupt_shard_is_named_at_open_when_asked(tmp_path):
    run = Path(toy_run(str(tmp_path / "run"), FOLD.novel, max_count=3))
    shard = sorted((run / "shards").iterdir())[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    reader = open_synthetic_run(str(run), "f", toy())  # lazily: the shard is hashed at its first read
    assert len(reader) == 2 * len(FOLD.novel)
    with pytest.raises(ConfigError, match=rf"^f: run .*corrupted shards: shards/{shard.name} sha256"):
        open_synthetic_run(str(run), "f", toy(), verify_shards=True)


def test_verified_shards_are_not_hashed_again(tmp_path, monkeypatch):
    reader = open_synthetic_run(toy_run(str(tmp_path / "run"), FOLD.novel), "f", toy(), verify_shards=True)
    hashed = []
    monkeypatch.setattr(type(reader), "_sha256", lambda self, name: hashed.append(name))
    assert all(reader.get(key).label.any() for key in reader.keys())
    assert hashed == []


def hsnet(tmp_path: Path, **overrides):
    """The shipped toy HSNet config writing under tmp_path."""
    return load_hsnet_config(ROOT / "configs" / "hsnet-toy.yaml", {"run.out_dir": str(tmp_path / "out"), **overrides})


def diffews(tmp_path: Path, **overrides):
    """The shipped toy DiffewS config writing under tmp_path."""
    return load_diffews_config(
        ROOT / "configs" / "diffews-toy.yaml", {"run.out_dir": str(tmp_path / "out"), **overrides}
    )


@pytest.mark.parametrize(
    "stage, field, make, classes, fold",
    [
        (train_hsnet, "train.synthetic_run", hsnet, "base", 1),
        (eval_hsnet, "eval.synthetic_run", hsnet, "novel", 0),
        (train_diffews, "train.synthetic_runs", diffews, "base", 1),
        (eval_diffews, "eval.synthetic_run", diffews, "novel", 0),
    ],
    ids=["hsnet-train", "hsnet-eval", "diffews-train", "diffews-eval"],
)
def test_every_learner_refuses_a_run_of_another_dataset_before_any_work(tmp_path, stage, field, make, classes, fold):
    classes = getattr(FOLD, classes)
    value = lambda url: [url] if field.endswith("runs") else url  # noqa: E731
    pascal = toy_run(str(tmp_path / "pascal"), classes, dataset="pascal", fold=fold)
    with pytest.raises(ConfigError, match=rf"^{field}: .*pascal is a run of dataset 'pascal'; expected a run of 'toy'"):
        stage(make(tmp_path, **{field: value(pascal)}), log=lambda m: None)
    assert not (tmp_path / "out").exists()
    if classes == FOLD.novel:  # evaluation reads the fold's novel classes: the run's fold must be the config's
        other = toy_run(str(tmp_path / "f2"), classes, fold=2)
        with pytest.raises(ConfigError, match=rf"^{field}: .*f2 is a run of toy fold 2; this config reads toy fold 0"):
            stage(make(tmp_path, **{field: value(other)}), log=lambda m: None)
