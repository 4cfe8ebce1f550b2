"""HSNet config validation and hashes, and the append-only Parquet benchmark table."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from maskforge.storage.results import RESULTS_SCHEMA, ResultsError, append_results, read_results, row_metric
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.hsnet.config import load_hsnet_config, parse_hsnet_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def row(**over):
    base = {
        "created_at": "2026-11-23T00:00:00+00:00", "model": "hsnet", "backbone": "tiny", "checkpoint": "c.safetensors",
        "dataset": "toy", "fold": 0, "split": "val", "shots": 1, "protocol": "fss-episodes", "setting": "1R",
        "synthetic_source": "none", "synthetic_per_class": 0, "evaluated": 10, "runs": 1, "seed": 0,
        "metrics": {"miou": 0.5, "fb_iou": 0.6}, "class_iou": {"1": 0.5}, "config_hash": "abc", "code_version": "0.1.0",
    }  # fmt: skip
    return {**base, **over}


def test_shipped_toy_config_is_valid():
    cfg = load_hsnet_config(CONFIGS / "hsnet-toy.yaml")
    assert cfg.model.backbone == "tiny" and cfg.train.lr == 1e-3 and cfg.eval.episodes == 1000 and cfg.eval.seed == 0


def test_config_errors_name_file_and_field(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"model": {"backbone": "resnet18"}, "eval": {"shots": 0}, "extra": 1}))
    with pytest.raises(ConfigError) as err:
        load_hsnet_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: invalid configuration (3 error(s))")
    assert "field 'model.backbone'" in text and "'resnet18'" in text
    assert "field 'eval.shots': Input should be greater than or equal to 1 (got 0)" in text
    assert "field 'extra': Extra inputs are not permitted" in text
    with pytest.raises(ConfigError, match="model.weights must be empty for backbone 'tiny'"):
        parse_hsnet_config({"model": {"backbone": "tiny", "weights": "w.pth"}})
    with pytest.raises(ConfigError, match="config file not found"):
        load_hsnet_config(tmp_path / "none.yaml")


def test_hashes_ignore_locations_and_the_training_folder_ignores_eval():
    a = parse_hsnet_config({"model": {"backbone": "tiny"}})
    b = parse_hsnet_config(
        {"model": {"backbone": "tiny"}, "run": {"out_dir": "elsewhere", "threads": 1}, "eval": {"episodes": 5}}
    )
    assert a.train_hash() == b.train_hash() and a.hash() != b.hash()
    assert b.train_dir() == f"elsewhere/hsnet-{a.train_hash()[:12]}"
    assert b.checkpoint_path() == f"elsewhere/hsnet-{a.train_hash()[:12]}/hsnet.safetensors"
    c = parse_hsnet_config({"model": {"backbone": "tiny"}, "train": {"steps": 7}})
    assert c.train_hash() != a.train_hash()
    d = parse_hsnet_config({"model": {"backbone": "tiny"}, "eval": {"results_dir": "r2"}, "run": {"device": "auto"}})
    assert d.hash() == a.hash()


def test_benchmark_table_appends_new_files(tmp_path):
    table_dir = str(tmp_path / "results")
    assert read_results(table_dir).num_rows == 0
    first = append_results(table_dir, [row(), row(setting="1R+20S", synthetic_source="runs/x", synthetic_per_class=20)])
    first_bytes = Path(first).read_bytes()
    second = append_results(table_dir, [row(metrics={"miou": 0.7, "fb_iou": 0.6})])
    assert first != second and Path(first).read_bytes() == first_bytes  # never rewritten
    table = read_results(table_dir)
    assert table.schema.equals(RESULTS_SCHEMA) and table.num_rows == 3
    rows = table.to_pylist()
    assert sorted(row_metric(r, "miou") for r in rows) == [0.5, 0.5, 0.7]
    assert {r["setting"] for r in rows} == {"1R", "1R+20S"}
    assert dict(rows[0]["class_iou"]) == {"1": 0.5}
    assert not list((tmp_path / "results").glob("*.tmp"))


def test_benchmark_rows_are_validated(tmp_path):
    bad = row()
    bad.pop("metrics")
    with pytest.raises(ResultsError, match=r"benchmark row 1: missing fields \['metrics'\], unexpected fields \[\]"):
        append_results(str(tmp_path), [row(), bad])
    with pytest.raises(ResultsError, match="do not fit the schema: row 1: "):
        append_results(str(tmp_path), [row(), row(fold="zero")])
    with pytest.raises(ResultsError, match="no rows"):
        append_results(str(tmp_path), [])
    (tmp_path / "results-broken.parquet").write_bytes(b"nope")
    with pytest.raises(ResultsError, match="results-broken.parquet: not a readable Parquet file"):
        read_results(str(tmp_path))


def test_episode_images_cache_is_bounded():
    from maskforge.eval.datasets import build_dataset
    from maskforge.eval.datasets.config import ToyConfig
    from maskforge.eval.episode_data import EpisodeImages, binary_target

    images = EpisodeImages(build_dataset("toy", None, ToyConfig(image_size=32, n_train=8, n_val=4)), cache_size=2)
    first = images.get("train_000000")
    images.get("train_000001")
    images.get("train_000000")  # refreshes train_000000
    images.get("train_000002")  # evicts train_000001, the least recently used
    assert list(images._cache) == ["train_000000", "train_000002"]
    assert images.get("train_000000") is first
    with pytest.raises(KeyError, match="no synthetic run is open"):
        images.get("syn:toy-f0-c0001-real-00000")
    label = np.array([[0, 3, -1], [2, 3, 3]], dtype=np.int32)
    assert binary_target(label, 3).tolist() == [[0, 1, -1], [0, 1, 1]]
