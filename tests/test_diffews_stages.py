"""DiffewS stages without Prefect on a tiny toy world: training, evaluation (± synthetic supports), rows, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import toy_run

from maskforge.eval.folds import toy_fold
from maskforge.models.diffews.checkpoint import DiffewsCheckpointError, empty_prompt_embedding, load_frozen_parts
from maskforge.models.diffews.network import DiffewsModelError
from maskforge.models.diffews.segmenter import DiffewsSegmenter
from maskforge.storage.results import append_results, read_results, rows_as_dicts
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.diffews.config import parse_diffews_config
from maskforge.tasks.diffews.evaluate import benchmark_rows, eval_diffews, load_segmenter, trend_markdown
from maskforge.tasks.diffews.model import embedding_sha
from maskforge.tasks.diffews.train import train_diffews
from maskforge.tasks.episode_results import checkpoint_label

ROOT = Path(__file__).resolve().parents[1]
TOY_SD = str(ROOT / "models" / "toy" / "sd")
# toy world seed 7: every base class of fold 0 has >= 3 training images (2-shot episodes), every novel class >= 2
# validation images (1-shot episodes) at only 40 / 24 images
TOY = {"seed": 7, "image_size": 32, "n_train": 40, "n_val": 24}
FOLD = toy_fold(0)
STEPS, ACCUMULATION, MAX_SHOTS, EPISODES = 2, 2, 2, 4


def quiet(_: str) -> None:
    """A log function that drops the message."""


def config(tmp: Path, **sections) -> dict:
    """A tiny DiffewS config: 32 px toy world and model, 2 steps of 2 x 2 episodes, 4 evaluation episodes."""
    data = {
        "run": {"name": "t", "out_dir": str(tmp / "runs"), "device": "cpu", "threads": 1},
        "dataset": {"name": "toy", "fold": 0, "toy": TOY},
        "model": {"sd": TOY_SD, "img_size": 32},
        "train": {
            "steps": STEPS, "batch_size": 2, "grad_accumulation": ACCUMULATION, "max_shots": MAX_SHOTS,
            "lr": 1e-4, "log_every": 1,
        },
        "eval": {
            "episodes": EPISODES, "results_dir": str(tmp / "results"), "relative_threshold": 0.5,
            "threshold_floor": 0.4, "threshold_rule": "mean-floor",
        },
    }  # fmt: skip
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def synthetic_run(url: str, classes, per_class: int, fold: int = 0, source: str = "text") -> str:
    """Write a complete maskforge-format run of object-centric toy samples (`per_class` per class) and return it."""
    return toy_run(url, classes, per_class, "toy", fold, TOY, source, size=32, max_count=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny DiffewS, trained once for the module, and its evaluation on the configured checkpoint."""
    tmp = tmp_path_factory.mktemp("diffews")
    cfg = parse_diffews_config(config(tmp))
    report = train_diffews(cfg, log=quiet)
    return tmp, cfg, report, eval_diffews(cfg, log=quiet)


@pytest.fixture(scope="module")
def empty_sha():
    """embedding_sha of the toy SD's empty-prompt embedding, computed from its tokenizer and text encoder."""
    _, tokenizer, encoder = load_frozen_parts(TOY_SD)
    embedding = empty_prompt_embedding(tokenizer, encoder)
    assert tuple(embedding.shape) == (1, 77, 32)  # padded to the tokenizer's length; the toy's cross-attention dim
    return embedding_sha(embedding)


def test_training_writes_a_complete_checkpoint_and_is_not_retrained(trained):
    tmp, cfg, report, _ = trained
    ckpt, out = Path(report["checkpoint"]), Path(report["train_dir"])
    assert ckpt == Path(cfg.train_dir()) / "diffews" and Path(cfg.checkpoint_path()) == ckpt
    assert out.parent == tmp / "runs" and out.name == f"t-{cfg.train_hash()[:12]}"
    marker = json.loads((ckpt / "COMPLETE.json").read_text())
    assert set(marker["files"]) == {
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_embedding.safetensors",
    }  # fmt: skip
    assert marker["train"]["steps"] == STEPS and marker["config"]["model"]["img_size"] == 32
    assert json.loads((ckpt / "unet" / "config.json").read_text())["in_channels_ref"] == 8
    assert (ckpt / "text_embedding.safetensors").is_file()
    assert parse_diffews_config(yaml.safe_load((out / "config.yaml").read_text())) == cfg
    logged = json.loads((out / "train.json").read_text())
    assert logged["steps"] == report["steps"] == STEPS and logged["losses"] == report["losses"]
    assert report["complete"] is True and report["parameters"] > 0
    assert len(report["losses"]) == STEPS and all(math.isfinite(x) and x > 0 for x in report["losses"])
    # one shot count per batch, each in 1..max_shots
    assert len(report["shot_counts"]) == MAX_SHOTS and sum(report["shot_counts"]) == STEPS * ACCUMULATION
    assert all(n >= 0 for n in report["shot_counts"]) and report["synthetic_draws"] == 0
    before = (ckpt / "COMPLETE.json").stat().st_mtime_ns
    messages = []
    again = train_diffews(cfg, log=messages.append)
    assert messages == [f"already trained: {ckpt}"]
    assert again["seconds"] == report["seconds"] and again["losses"] == report["losses"] and again["complete"]
    assert (ckpt / "COMPLETE.json").stat().st_mtime_ns == before


def test_training_and_evaluation_condition_on_the_same_empty_prompt(trained, empty_sha):
    _, _, report, result = trained
    assert result["text_embedding_sha256"] == result["trained_text_embedding_sha256"] == report["text_embedding_sha256"]
    assert report["text_embedding_sha256"] == empty_sha


def test_evaluation_settings_rows_and_trend(trained):
    tmp, cfg, report, result = trained
    assert result["checkpoint"] == report["checkpoint"] and result["episodes"] == EPISODES
    assert (result["dataset"], result["fold"], result["split"], result["shots"]) == ("toy", 0, "val", 1)
    assert set(result["settings"]) == {"1R"} and result["synthetic_source"] == "none"
    ours = result["settings"]["1R"]
    assert 0.0 <= ours["miou"] <= 1.0 and 0.0 <= ours["fb_iou"] <= 1.0 and ours["episodes"] == EPISODES
    assert set(ours["class_iou"]) <= {str(c) for c in FOLD.novel}
    assert set(result["baselines"]) == {"all-background", "support-prior"}
    assert result["baselines"]["all-background"]["miou"] == 0.0  # no foreground: IoU 0 for every class
    (row,) = benchmark_rows(cfg, result)
    assert (row["model"], row["protocol"], row["setting"], row["backbone"]) == (
        "diffews",
        "fss-episodes",
        "1R",
        "sd-unet",
    )
    assert row["evaluated"] == EPISODES and row["runs"] == 1 and row["synthetic_source"] == "none"
    assert row["metrics"] == {"miou": ours["miou"], "fb_iou": ours["fb_iou"]} and row["config_hash"] == cfg.hash()
    folder = str(tmp / "trend-results")
    append_results(folder, [row])
    hsnet = {
        **row, "model": "hsnet", "backbone": "tiny", "checkpoint": "runs/h/hsnet-best.safetensors",
        "metrics": {"miou": 0.777, "fb_iou": 0.888}, "created_at": "2000-01-01T00:00:00+00:00",
    }  # fmt: skip
    append_results(folder, [hsnet])
    assert {r["model"] for r in rows_as_dicts(read_results(folder))} == {"diffews", "hsnet"}
    text = trend_markdown(read_results(folder), "toy", 0, 1)
    assert text.startswith("# DiffewS trend: toy fold 0, 1-shot")
    table = text.split("## 1R\n")[1]
    assert (
        f"| {row['created_at']} | none | sd-unet | {checkpoint_label(row['checkpoint'])} | {100 * ours['miou']:.2f} | "
        f"{100 * ours['fb_iou']:.2f} |  |" in table
    )
    assert table.count(f"| {row['created_at']} |") == 1 and text.count("## ") == 1
    assert "hsnet-best" not in text and "77.70" not in text and "2000-01-01" not in text and "tiny" not in text
    assert trend_markdown(read_results(folder), "toy", 1, 1).count("|") == 0  # other folds are other trends


def test_eval_with_synthetic_supports_reports_both_settings(trained, tmp_path):
    tmp, _, _, plain = trained
    run = synthetic_run(str(tmp_path / "syn"), FOLD.novel, per_class=3)
    cfg = parse_diffews_config(config(tmp, eval={"synthetic_run": run, "synthetic_per_class": 2}))
    result = eval_diffews(cfg, log=quiet)
    assert set(result["settings"]) == {"1R", "1R+2S"} and result["episodes"] == EPISODES
    assert result["synthetic_source"] == run and result["synthetic_per_class"] == 2
    for summary in result["settings"].values():
        assert 0.0 <= summary["miou"] <= 1.0 and 0.0 <= summary["fb_iou"] <= 1.0
    # the real setting sees the same episodes and no synthetic key/value: its scores do not change
    assert result["settings"]["1R"]["miou"] == pytest.approx(plain["settings"]["1R"]["miou"])
    assert result["settings"]["1R"]["fb_iou"] == pytest.approx(plain["settings"]["1R"]["fb_iou"])
    rows = {r["setting"]: r for r in benchmark_rows(cfg, result)}
    assert rows["1R"]["synthetic_source"] == "none" and rows["1R"]["synthetic_per_class"] == 0
    assert rows["1R+2S"]["synthetic_source"] == run and rows["1R+2S"]["synthetic_per_class"] == 2
    too_many = parse_diffews_config(config(tmp, eval={"synthetic_run": run, "synthetic_per_class": 4}))
    with pytest.raises(ConfigError, match=r"synthetic_per_class: run .*syn holds 3 generated sample\(s\) of class 1"):
        eval_diffews(too_many, log=quiet)


def test_training_with_synthetic_runs_of_base_classes(tmp_path):
    run = synthetic_run(str(tmp_path / "base-syn"), FOLD.base, per_class=3, fold=1)
    cfg = parse_diffews_config(config(tmp_path, train={"steps": 1, "synthetic_runs": [run]}))
    report = train_diffews(cfg, log=quiet)
    assert report["steps"] == 1 and report["synthetic_draws"] > 0
    assert sum(report["shot_counts"]) == ACCUMULATION and Path(report["checkpoint"], "COMPLETE.json").is_file()
    novel_only = synthetic_run(str(tmp_path / "novel-syn"), FOLD.novel, per_class=2)
    bad = parse_diffews_config(config(tmp_path, train={"steps": 1, "synthetic_runs": [novel_only]}))
    with pytest.raises(ConfigError, match=r"train\.synthetic_runs: .*novel-syn holds no sample of a base class"):
        train_diffews(bad, log=quiet)
    assert not Path(bad.train_dir()).exists()  # refused before anything is written


def test_a_support_without_foreground_is_named(trained):
    _, cfg, _, _ = trained
    segmenter, _, _ = load_segmenter(cfg)
    image = np.zeros((32, 32, 3), np.uint8)
    good = np.zeros((32, 32), bool)
    good[8:20, 8:20] = True
    with pytest.raises(DiffewsModelError, match="support val_empty: its mask has no foreground at 32 px"):
        segmenter.support_latents([image, image], [good, np.zeros((32, 32), bool)], ["val_ok", "val_empty"])
    speck = np.zeros((64, 64), bool)
    speck[1, 1] = True  # nearest-neighbour resizing to 32 px drops odd rows and columns: nothing is left
    with pytest.raises(DiffewsModelError, match="support val_speck: its mask has no foreground at 32 px"):
        segmenter.support_latents([np.zeros((64, 64, 3), np.uint8)], [speck], ["val_speck"])
    image_latents, mask_latents = segmenter.support_latents([image], [good], ["val_ok"])
    assert tuple(image_latents.shape) == tuple(mask_latents.shape) == (1, 4, 8, 8)


def test_an_img_size_the_network_cannot_take_is_named(trained, tmp_path):
    tmp, cfg, _, _ = trained
    with pytest.raises(ConfigError, match="model.img_size: 40 is not a multiple of 16"):
        train_diffews(parse_diffews_config(config(tmp_path, model={"img_size": 40})), log=quiet)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("COMPLETE.json"))
    segmenter, _, _ = load_segmenter(cfg)
    with pytest.raises(DiffewsModelError, match="model.img_size: 40 is not a multiple of 16"):
        DiffewsSegmenter(segmenter.net, 40, segmenter.device)
    other = parse_diffews_config(config(tmp, model={"img_size": 48}, eval={"checkpoint": cfg.checkpoint_path()}))
    with pytest.raises(ConfigError, match="model.img_size: the checkpoint .* was trained at 32 px, the config says 48"):
        eval_diffews(other, log=quiet)


def test_a_missing_checkpoint_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = parse_diffews_config(config(tmp_path, eval={"checkpoint": str(tmp_path / "empty")}))
    with pytest.raises(DiffewsCheckpointError, match=r"eval\.checkpoint: .*empty is neither a DiffewS checkpoint"):
        eval_diffews(cfg, log=quiet)
    untrained = parse_diffews_config(config(tmp_path))  # no eval.checkpoint, nothing trained in this out_dir
    with pytest.raises(DiffewsCheckpointError, match="eval.checkpoint: .*train first"):
        eval_diffews(untrained, log=quiet)


def test_bf16_on_the_cpu_is_refused(trained, tmp_path):
    tmp, _, _, _ = trained
    with pytest.raises(ConfigError, match="run.precision: bf16 needs a GPU"):
        train_diffews(parse_diffews_config(config(tmp_path, run={"precision": "bf16"})), log=quiet)
    with pytest.raises(ConfigError, match="run.precision: fp16 needs a GPU"):
        eval_diffews(parse_diffews_config(config(tmp, run={"precision": "fp16"})), log=quiet)


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("train", {"max_shots": 0}, "train.max_shots"),
        ("eval", {"synthetic_per_class": 65}, "eval.synthetic_per_class"),
        ("train", {"stepz": 3}, "train.stepz"),
        ("model", {"img_size": 16}, "model.img_size"),
        ("run", {"name": "Bad Name"}, "run.name"),
    ],
)
def test_config_errors_name_the_field(tmp_path, section, values, field):
    with pytest.raises(ConfigError, match=rf"<test>: invalid configuration .*\n  field '{field}'"):
        parse_diffews_config(config(tmp_path, **{section: values}), source="<test>")


def test_a_run_listed_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.synthetic_runs: a run is listed twice"):
        parse_diffews_config(config(tmp_path, train={"synthetic_runs": ["/r", "/r"]}))


def test_config_hashes(tmp_path):
    a = parse_diffews_config(config(tmp_path))
    b = parse_diffews_config(config(tmp_path, eval={"episodes": 9}, run={"threads": 2}))
    c = parse_diffews_config(config(tmp_path, train={"max_shots": 1}))
    assert a.train_dir() == b.train_dir() != c.train_dir() and a.hash() != b.hash()
    assert a.hash() == parse_diffews_config(config(tmp_path / "elsewhere")).hash()  # out_dir, results_dir excluded
    assert parse_diffews_config(config(tmp_path, eval={"checkpoint": "/x"})).checkpoint_path() == "/x"


def test_gradient_checkpointing_trains_the_same_model(tmp_path):
    """run.gradient_checkpointing changes memory, not the model: same losses, and the same train folder and hash."""
    plain = parse_diffews_config(config(tmp_path / "plain", train={"steps": 2, "log_every": 1}))
    replayed = parse_diffews_config(
        config(tmp_path / "replayed", train={"steps": 2, "log_every": 1}, run={"gradient_checkpointing": True})
    )
    assert Path(plain.train_dir()).name == Path(replayed.train_dir()).name and plain.hash() == replayed.hash()
    a, b = train_diffews(plain, log=quiet), train_diffews(replayed, log=quiet)
    assert len(a["losses"]) == 2 and a["losses"] == pytest.approx(b["losses"], rel=1e-5)


def test_an_authors_layout_unet_folder_evaluates_like_the_checkpoint(trained, empty_sha):
    tmp, _, report, result = trained
    unet_dir = str(Path(report["checkpoint"]) / "unet")
    cfg = parse_diffews_config(config(tmp, eval={"checkpoint": unet_dir}))
    authors = eval_diffews(cfg, log=quiet)
    assert authors["checkpoint"] == unet_dir and authors["trained_text_embedding_sha256"] is None
    assert authors["text_embedding_sha256"] == empty_sha and authors["episodes"] == EPISODES
    # same weights, same (recomputed) embedding, same episodes: same scores
    assert authors["settings"]["1R"]["miou"] == pytest.approx(result["settings"]["1R"]["miou"])
    assert authors["settings"]["1R"]["class_iou"] == pytest.approx(result["settings"]["1R"]["class_iou"])


def test_the_shipped_toy_diffews_beats_the_trivial_baselines(tmp_path):
    """models/checkpoints/diffews-toy-f0 on 40 of configs/diffews-toy.yaml's episodes: far above the support prior."""
    overrides = {
        "run": {"out_dir": str(tmp_path / "runs"), "threads": 1},
        "eval": {"checkpoint": str(ROOT / "models/checkpoints/diffews-toy-f0"), "episodes": 40},
    }
    data = yaml.safe_load((ROOT / "configs/diffews-toy.yaml").read_text())
    for name, values in overrides.items():
        data[name] = {**data[name], **values}
    data["model"]["sd"] = TOY_SD
    data["eval"]["results_dir"] = str(tmp_path / "results")
    result = eval_diffews(parse_diffews_config(data), log=quiet)
    real, prior = result["settings"]["1R"], result["baselines"]["support-prior"]
    assert result["trained_text_embedding_sha256"] == result["text_embedding_sha256"]
    assert real["miou"] > prior["miou"] + 0.2 and real["fb_iou"] > result["baselines"]["all-background"]["fb_iou"]
