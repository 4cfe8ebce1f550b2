"""The trained toy models shipped in the repository do what random weights of the same architecture cannot."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskforge.eval.datasets.toy import render_object
from maskforge.eval.toy_generation import class_images, mask_fit, recognition
from maskforge.models.controls import mask_condition
from maskforge.models.tiny import SD_DIR, controlnet_dir
from maskforge.tasks.toy_scoring import xattn_fit

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "models" / "toy"
HSNET = ROOT / "models" / "checkpoints" / "hsnet-toy-f0.safetensors"
#: Base classes of toy fold 0 (seen in training) and one novel class per material (never seen).
BASE = ("green disc", "red square", "blue star")
NOVEL = ("green square", "red disc", "blue triangle")
STEPS, GUIDANCE, N = 12, 5.0, 3


def _pipelines(folder: Path):
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    torch.set_num_threads(2)
    sd = StableDiffusionPipeline.from_pretrained(str(folder / SD_DIR), local_files_only=True, safety_checker=None)
    sd.set_progress_bar_config(disable=True)
    net = ControlNetModel.from_pretrained(str(folder / controlnet_dir("mask")), local_files_only=True)
    cn = StableDiffusionControlNetPipeline.from_pipe(sd, controlnet=net)
    cn.set_progress_bar_config(disable=True)
    return sd, cn


@pytest.fixture(scope="module")
def trained():
    return _pipelines(TOY)


@pytest.fixture(scope="module")
def random_weights(tiny_models):
    return _pipelines(Path(tiny_models[SD_DIR]).parent)


def _class_share(sd, classes) -> float:
    return float(
        np.mean(
            [recognition(class_images(sd, c, N, STEPS, GUIDANCE, seed=i), c)["class"] for i, c in enumerate(classes)]
        )
    )


def test_shipped_files_are_safetensors_under_40_mb():
    files = [p for p in TOY.rglob("*") if p.is_file()] + [HSNET]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) < 40 * 2**20
    assert {"train-diffusion", "train-controlnet-mask"} <= set(
        __import__("json").loads((TOY / "training.json").read_text())
    )


def test_prompts_show_the_class_asked_for(trained, random_weights):
    # the oracle names class and material from the pixels; random weights draw noise it cannot name
    base, novel, rand = (
        _class_share(trained[0], BASE),
        _class_share(trained[0], NOVEL),
        _class_share(random_weights[0], BASE),
    )
    assert base >= 0.6, base
    assert rand <= 0.2, rand
    materials = np.mean(
        [recognition(class_images(trained[0], c, N, STEPS, GUIDANCE, seed=7), c)["material"] for c in NOVEL]
    )
    assert materials >= 0.6, materials  # held-out combinations still get their colour word right
    assert novel >= rand, (novel, rand)


def _cn_fit(pipe, radius: tuple[float, float], centre: tuple[float, float]) -> float:
    masks = np.stack([render_object(123, 6, i, 64, radius, centre)[1] for i in range(N)])  # green square outlines
    cond = [Image.fromarray(mask_condition(m, (255, 255, 255))) for m in masks]
    return mask_fit(class_images(pipe, "green square", N, STEPS, GUIDANCE, seed=3, image=cond), masks, "green square")


def test_mask_controlnet_draws_the_object_inside_the_mask(trained, random_weights):
    fit = {
        name: _cn_fit(pipes[1], (0.22, 0.38), (0.38, 0.62))
        for name, pipes in (("trained", trained), ("random", random_weights))
    }
    assert fit["trained"] >= 0.5, fit
    assert fit["random"] <= 0.2, fit
    # real shots' masks are often small and off-centre: the ControlNet was trained on such objects too
    small = _cn_fit(trained[1], (0.08, 0.16), (0.2, 0.8))
    assert small >= 0.6, small  # 0.70 measured; 0.51 for the ControlNet trained on large centred objects only


def test_shipped_hsnet_beats_trivial_baselines():
    from maskforge.tasks.hsnet.config import load_hsnet_config
    from maskforge.tasks.hsnet.eval import eval_hsnet

    cfg = load_hsnet_config(
        ROOT / "configs" / "hsnet-toy-refine.yaml",
        {"eval.checkpoint": str(HSNET), "eval.episodes": 60, "run.threads": 2},
    )
    result = eval_hsnet(cfg, log=lambda _: None)
    ours = result["settings"]["1R"]["miou"]
    assert ours > max(b["miou"] for b in result["baselines"].values()) + 0.1, (ours, result["baselines"])


def _xattn_fit(pipe) -> float:
    return float(np.mean([xattn_fit(pipe, c, N, STEPS, GUIDANCE, seed=50 * i) for i, c in enumerate(BASE + NOVEL)]))


def test_class_word_attention_covers_the_object(trained, random_weights):
    # the grounding fine-tune (models/grounding.py) puts the class word's cross-attention on the object
    fit = {"trained": _xattn_fit(trained[0]), "random": _xattn_fit(random_weights[0])}
    assert fit["trained"] >= 0.5, fit
    assert fit["random"] <= 0.2, fit
