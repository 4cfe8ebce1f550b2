"""The typed config: the demo config validates; errors name the file, the field and what was expected."""

from pathlib import Path

import pytest
import yaml

from maskforge.eval.datasets.config import DatasetConfig
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import load_config, parse_config
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.hsnet.config import load_hsnet_config
from maskforge.tasks.maskdiff.config import load_maskdiff_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
#: The loader of each config kind, by the first word of its file name in configs/.
LOADERS = {
    "demo": load_config,
    "hsnet": load_hsnet_config,
    "gfss": load_gfss_config,
    "diffews": load_diffews_config,
    "maskdiff": load_maskdiff_config,
}


def _loader(config_file: str):
    return LOADERS[config_file.removesuffix(".yaml").split("-")[0]]


def test_demo_config_loads_and_hash_ignores_out_dir():
    cfg = load_config(DEMO)
    assert cfg.dataset.name == "toy" and cfg.generation.sources == ("real",)
    moved = load_config(DEMO, {"run.out_dir": "/elsewhere"})
    assert moved.run.out_dir == "/elsewhere" and moved.hash() == cfg.hash()
    assert load_config(DEMO, {"run.seed": 1}).hash() != cfg.hash()
    assert cfg.resolved()["shards"]["jpeg_quality"] == 95


def test_field_errors_name_file_field_and_expectation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  fold: 7\nshards:\n  colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert str(bad) in text
    assert "field 'dataset.fold'" in text and "less than or equal to 3" in text and "(got 7)" in text
    assert "field 'shards.colour'" in text and "Extra inputs are not permitted" in text


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"dataset": {"name": "pascal"}}, "dataset.root is required"),
        ({"dataset": {"name": "fss", "root": "/x", "fold": 2}}, "FSS-1000 has one fold"),
        ({"dataset": {"name": "coco", "root": "/x", "fss_trainval": "derived"}}, "dataset.fss_trainval applies to"),
        ({"dataset": {"name": "fss", "root": "/x", "fss_trainval": "random"}}, "field 'dataset.fss_trainval'"),
        ({"copy_paste": {"min_objects": 4, "max_objects": 2}}, "min_objects (4) must be <= max_objects (2)"),
        ({"run": {"name": "Bad Name"}}, "field 'run.name'"),
        ({"generation": {"sources": ["dream"]}}, "field 'generation.sources.0'"),
    ],
)
def test_invalid_values(data, needle):
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(data, source="inline.yaml")
    assert needle in str(err.value) and "inline.yaml" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_dataset_dump_keeps_its_keys_unless_fss_trainval_is_set():
    toy = {"seed": 0, "image_size": 96, "n_train": 400, "n_val": 100}
    old = {"name": "toy", "root": None, "fold": 0, "coco_fold_mode": "interleaved", "toy": toy}
    assert DatasetConfig().model_dump(mode="json") == old
    assert list(DatasetConfig().model_dump(mode="json")) == ["name", "root", "fold", "coco_fold_mode", "toy"]
    assert "fss_trainval" not in DatasetConfig(name="fss", root="/fss").model_dump(mode="json")
    derived = DatasetConfig(name="fss", root="/fss", fss_trainval="derived")
    assert derived.model_dump(mode="json") == {**old, "name": "fss", "root": "/fss", "fss_trainval": "derived"}
    assert DatasetConfig.model_validate(derived.model_dump(mode="json")) == derived
    assert DatasetConfig(name="fss", root="/fss", fss_trainval="lists").model_dump()["fss_trainval"] == "lists"


def test_fss_trainval_is_recorded_and_hashed():
    fss = {"name": "fss", "root": "/fss"}
    plain = parse_config({"dataset": fss}, source="inline.yaml")
    derived = parse_config({"dataset": {**fss, "fss_trainval": "derived"}}, source="inline.yaml")
    assert "fss_trainval" not in plain.resolved()["dataset"]
    assert derived.resolved()["dataset"]["fss_trainval"] == "derived"
    assert derived.hash() != plain.hash()


@pytest.mark.parametrize(
    "config_file, field",
    [
        ("demo.yaml", "run.out_dir"),
        ("demo.yaml", "dataset.root"),
        ("demo.yaml", "diffusion.model"),
        ("demo.yaml", "diffusion.embedding.bank"),
        ("demo.yaml", "diffusion.controlnet.models.mask"),
        ("demo.yaml", "refinement.checkpoint"),
        ("hsnet-toy.yaml", "run.out_dir"),
        ("hsnet-toy.yaml", "eval.checkpoint"),
        ("hsnet-toy.yaml", "eval.results_dir"),
        ("gfss-toy.yaml", "base.checkpoint"),
        ("diffews-toy.yaml", "eval.synthetic_run"),
        ("diffews-toy.yaml", "model.sd"),
        ("maskdiff-toy.yaml", "run.out_dir"),
        ("maskdiff-toy.yaml", "eval.results_dir"),
    ],
)
def test_an_empty_path_is_an_error_not_a_default(config_file, field):
    """An empty path would quietly mean the current folder or the default (e.g. `--out ""`); it is refused."""
    loader = _loader(config_file)
    with pytest.raises(ConfigError, match=rf"field '{field}': String should have at least 1 character \(got ''\)"):
        loader(DEMO.parent / config_file, {field: ""})


@pytest.mark.parametrize(
    "config_file, field",
    [
        ("demo.yaml", "run.seed"),
        ("demo.yaml", "shots.seed"),
        ("demo.yaml", "dataset.toy.seed"),
        ("hsnet-toy.yaml", "train.seed"),
        ("gfss-toy.yaml", "novel.master_seed"),
        ("diffews-toy.yaml", "eval.seed"),
        ("maskdiff-toy.yaml", "base.seed"),
    ],
)
def test_seeds_are_bounded_before_any_work(config_file, field):
    """Seeds take 0 .. 2^32 - 1: a negative or huge one failed inside a stage (numpy, torch.manual_seed)."""
    loader = _loader(config_file)
    path = DEMO.parent / config_file
    with pytest.raises(ConfigError, match=rf"field '{field}': Input should be greater than or equal to 0 \(got -1\)"):
        loader(path, {field: -1})
    with pytest.raises(ConfigError, match=rf"field '{field}': Input should be less than or equal to 4294967295"):
        loader(path, {field: 2**64})
    assert loader(path, {field: 2**32 - 1}) is not None


def _int_fields(model, prefix=""):
    """Yield (dotted name, has an upper bound) for every int field of a config model and its sections."""
    import types
    import typing

    import annotated_types
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        for kind in typing.get_args(field.annotation) if union else (field.annotation,):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _int_fields(kind, f"{prefix}{name}.")
            elif kind is int:
                yield (
                    f"{prefix}{name}",
                    any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in field.metadata),
                )


def test_every_count_and_size_a_user_can_type_is_bounded():
    """Every int of every config kind has an upper bound (a count or size typed too large is a config error, not an
    allocation or a week of training); MaskDiff's shots are checked against TFA's set instead."""
    from maskforge.models.toy_train_config import ToyTrainConfig
    from maskforge.tasks.config import MaskforgeConfig
    from maskforge.tasks.diffews.config import DiffewsConfig
    from maskforge.tasks.gfss.config import GfssConfig
    from maskforge.tasks.hsnet.config import HsnetConfig
    from maskforge.tasks.maskdiff.config import MaskdiffConfig

    roots = (MaskforgeConfig, HsnetConfig, GfssConfig, DiffewsConfig, MaskdiffConfig, ToyTrainConfig)
    fields = {f"{root.__name__}.{name}": bounded for root in roots for name, bounded in _int_fields(root)}
    assert len(fields) > 60  # the walk reaches the sections
    assert [name for name, bounded in fields.items() if not bounded] == ["MaskdiffConfig.finetune.shots"]


@pytest.mark.parametrize(
    "parse, data, field",
    [
        ("gfss", {"novel": {"synthetic_runs": ["runs/a", "runs/b", "runs/a"]}}, "novel.synthetic_runs"),
        ("maskdiff", {"finetune": {"synthetic_runs": ["runs/a", "runs/a"]}}, "finetune.synthetic_runs"),
    ],
)
def test_a_synthetic_run_listed_twice_is_refused(parse, data, field):
    """The same run twice would weigh its samples double and give the stage another hash."""
    from maskforge.tasks.gfss.config import parse_gfss_config
    from maskforge.tasks.maskdiff.config import parse_maskdiff_config

    parser = {"gfss": parse_gfss_config, "maskdiff": parse_maskdiff_config}[parse]
    with pytest.raises(ConfigError, match=rf"{field}: a run is listed twice \(runs/a\)"):
        parser(data)


@pytest.mark.parametrize(
    "runs",
    [
        ["runs/demo", "runs/demo/"],
        ["runs/demo", "./runs/demo"],
        ["runs/demo", "runs/../runs/demo"],
        ["memory://bucket/run", "memory://bucket/run/"],
    ],
)
def test_a_run_listed_twice_under_two_spellings_is_refused(runs, tmp_path, monkeypatch):
    """Runs are compared by where they point, not by spelling (a trailing slash passed before and trained with the
    run twice); a symlink to a listed run is the same run too."""
    from maskforge.tasks.diffews.config import parse_diffews_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"train\.synthetic_runs: a run is listed twice \({runs[0]} and "):
        parse_diffews_config({"train": {"synthetic_runs": runs}})
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "runs" / "demo")
    with pytest.raises(ConfigError, match="a run is listed twice"):
        parse_diffews_config({"train": {"synthetic_runs": ["runs/demo", "alias"]}})
    assert parse_diffews_config({"train": {"synthetic_runs": ["runs/demo", "runs/demo2"]}}).train.synthetic_runs == [
        "runs/demo",
        "runs/demo2",
    ]


def test_maskdiff_head_size_is_checked_when_the_config_loads_not_after_the_detector_trained(tmp_path):
    """head.size 33 used to pass validation; the error came after the detector had trained, without `head.`."""
    from maskforge.models.maskdiff.mask_head import paper_spec, tiny_spec
    from maskforge.tasks.maskdiff.config import HEAD_LEVELS, load_maskdiff_config, parse_maskdiff_config

    # the config's level counts are the architectures' own
    assert HEAD_LEVELS == {
        "paper": len(paper_spec(2, 5).block_out_channels),
        "tiny": len(tiny_spec(2, 5).block_out_channels),
    }
    path = tmp_path / "maskdiff.yaml"
    path.write_text(yaml.safe_dump({"head": {"size": 33}}))
    with pytest.raises(ConfigError, match=r"head\.size 33: expected a multiple of 16 for head\.arch 'paper'"):
        load_maskdiff_config(path)
    with pytest.raises(ConfigError, match=r"head\.size 34: expected a multiple of 4 for head\.arch 'tiny'"):
        parse_maskdiff_config({"head": {"arch": "tiny", "size": 34}})
    assert parse_maskdiff_config({"head": {"arch": "tiny", "size": 36}}).head.size == 36
    for name in ("maskdiff-toy.yaml", "maskdiff-coco.yaml"):  # the shipped configs still load
        assert load_maskdiff_config(ROOT / "configs" / name).head.size % 4 == 0
