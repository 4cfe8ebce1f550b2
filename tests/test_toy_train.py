"""The toy training commands run end to end on a miniature schedule and write loadable models with their record."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from maskforge.eval.datasets.toy import render_object
from maskforge.flows.cli import app
from maskforge.models.toy_train import object_set
from maskforge.models.toy_train_config import ToyTrainConfig

MINI = {
    "images_per_class": 2,
    "threads": 1,
    "log_every": 1,
    "device": "cpu",
    "vae": {"steps": 2, "batch_size": 2},
    "diffusion": {"steps": 2, "batch_size": 2},
    "ground": {"steps": 2, "batch_size": 2, "grounding_weight": 1.0},
    "controlnet": {"kinds": ["mask", "scribble"], "steps": 1, "batch_size": 2},
}


def test_object_renders_are_deterministic_single_objects():
    a, mask = render_object(0, 6, 3, 64)
    b, _ = render_object(0, 6, 3, 64)
    assert np.array_equal(a, b) and a.shape == (64, 64, 3) and mask.dtype == bool
    assert 0.05 < mask.mean() < 0.5  # one large object, never the whole frame
    objects = object_set(ToyTrainConfig(images_per_class=2, image_size=32))
    # fold 0 novel classes (1, 6, 11, 16) never appear in the training images
    assert sorted(set(objects.class_ids.tolist())) == [2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15]
    assert objects.images.shape == (24, 32, 32, 3) and objects.masks.shape == (24, 32, 32)


def test_train_commands_write_models_and_record(tmp_path):
    from diffusers import ControlNetModel, StableDiffusionPipeline

    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(MINI))
    out = tmp_path / "toy"
    runner = CliRunner()
    result = runner.invoke(app, ["toy", "train-diffusion", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    before = load_file(out / "sd" / "unet" / "diffusion_pytorch_model.safetensors")
    result = runner.invoke(app, ["toy", "ground", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    after = load_file(out / "sd" / "unet" / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    result = runner.invoke(app, ["toy", "train-controlnet", str(config), "--out", str(out), "--kind", "mask"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "training.json").read_text())
    assert set(record) == {"train-diffusion", "ground-diffusion", "train-controlnet-mask"}
    assert np.isfinite(record["ground-diffusion"]["diffusion"]["grounding_mse"])
    assert "grounding_mse" not in record["train-diffusion"]["diffusion"]  # off while learning to draw
    assert record["train-diffusion"]["config"]["vae"]["steps"] == 2 and record["train-diffusion"]["seconds"] > 0
    assert np.isfinite(record["train-diffusion"]["diffusion"]["noise_mse"])
    pipe = StableDiffusionPipeline.from_pretrained(str(out / "sd"), local_files_only=True, safety_checker=None)
    assert pipe.vae.config.scaling_factor == pytest.approx(record["train-diffusion"]["vae"]["scaling_factor"], rel=1e-3)
    ControlNetModel.from_pretrained(str(out / "controlnet-mask"), local_files_only=True)
    assert not (out / "controlnet-scribble").exists()  # only the kind asked for


def test_train_controlnet_without_trained_sd_names_the_folder(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(MINI))
    result = CliRunner().invoke(app, ["toy", "train-controlnet", str(config), "--out", str(tmp_path / "none")])
    assert result.exit_code == 1 and "train-diffusion" in result.output


def test_bad_config_field_is_named(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({**MINI, "vae": {"steps": 0}}))
    result = CliRunner().invoke(app, ["toy", "train-diffusion", str(config), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "vae.steps" in result.output


def test_cuda_without_gpu_names_the_toy_config_field(tmp_path, monkeypatch):
    from maskforge.models.toy_train import train_diffusion

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device \(toy training config\): 'cuda' requested"):
        train_diffusion(ToyTrainConfig(**{**MINI, "device": "cuda"}), tmp_path / "toy")


def test_controlnet_objects_follow_the_configured_ranges():
    cfg = ToyTrainConfig(images_per_class=3, image_size=64)
    large = object_set(cfg)
    small = object_set(cfg, (0.08, 0.1), (0.2, 0.3))
    assert small.masks.mean() < large.masks.mean() / 4
    ys, xs = np.nonzero(small.masks.any(axis=0))
    assert ys.max() < 0.45 * 64 and xs.max() < 0.45 * 64  # every small object sits in the top-left region
    assert np.array_equal(small.class_ids, large.class_ids)
    with pytest.raises(ValueError, match=r"object_radius \[0.5, 0.2\]"):
        ToyTrainConfig(controlnet={"object_radius": (0.5, 0.2)})
