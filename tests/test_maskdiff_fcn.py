"""The FCN mask-head baseline (Mask R-CNN's class-agnostic head on the region crop) and eval_maskdiff's masker hook."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from maskforge.eval.datasets import open_dataset
from maskforge.eval.folds import get_fold
from maskforge.eval.fsis_protocol import kshot_instances
from maskforge.models.maskdiff import detector as det
from maskforge.models.maskdiff import mask_head as head
from maskforge.models.maskdiff.fcn_head import FcnHeadError, FcnMaskHead, fcn_loss, fcn_masks
from maskforge.storage.shards import sha256_file
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.maskdiff import evaluate
from maskforge.tasks.maskdiff.config import parse_maskdiff_config

SHOTS, IMAGES, BATCH, SEEDS = 1, 6, 4, 3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


def test_layers_and_shapes():
    fcn = FcnMaskHead(in_channels=3, width=8, convs=4)
    convs = [m for m in fcn.convs if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.in_channels, c.out_channels) for c in convs] == [((3, 3), 3, 8)] + [((3, 3), 8, 8)] * 3
    assert sum(isinstance(m, nn.ReLU) for m in fcn.convs) == 4
    assert (fcn.deconv.kernel_size, fcn.deconv.stride) == ((2, 2), (2, 2))
    assert (fcn.logits.kernel_size, fcn.logits.out_channels) == ((1, 1), 1)
    for size in (16, 32):
        x = torch.rand(5, 3, size, size) * 2 - 1
        assert fcn(x).shape == (5, 1, size, size)
        masks = fcn_masks(fcn, x)
        assert masks.shape == (5, 1, size, size) and masks.dtype == torch.bool
    assert fcn(torch.zeros(0, 3, 16, 16)).shape == (0, 1, 16, 16)


def test_bad_arguments_name_the_field():
    with pytest.raises(FcnHeadError, match="FcnMaskHead.width"):
        FcnMaskHead(width=0)
    fcn = FcnMaskHead(width=8)
    with pytest.raises(FcnHeadError, match=r"regions: expected an \(N, 3, S, S\)"):
        fcn(torch.zeros(2, 4, 16, 16))
    with pytest.raises(FcnHeadError, match="targets: expected shape"):
        fcn_loss(fcn, torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 8, 8))
    with pytest.raises(FcnHeadError, match=r"targets: expected values in \{0, 1\}"):
        fcn_loss(fcn, torch.zeros(2, 3, 16, 16), -torch.ones(2, 1, 16, 16))


def test_loss_is_bce_on_a_known_case():
    fcn = FcnMaskHead(width=4, convs=1)
    for p in fcn.parameters():
        nn.init.zeros_(p)
    nn.init.constant_(fcn.logits.bias, 2.0)  # every logit is 2 whatever the input
    targets = torch.zeros(2, 1, 16, 16)
    targets[:, :, :8] = 1  # half ones, half zeros
    p = torch.sigmoid(torch.tensor(2.0))
    expected = -0.5 * (torch.log(p) + torch.log(1 - p))
    assert fcn_loss(fcn, torch.rand(2, 3, 16, 16), targets).item() == pytest.approx(expected.item(), rel=1e-5)
    assert fcn_loss(fcn, torch.rand(2, 3, 16, 16), targets.bool()).item() == pytest.approx(expected.item(), rel=1e-5)


def test_thresholding_at_sigmoid_one_half():
    fcn = FcnMaskHead(width=4, convs=0)
    for p in fcn.parameters():
        nn.init.zeros_(p)
    x = torch.zeros(1, 3, 16, 16)
    for bias, want in ((1e-3, True), (-1e-3, False), (0.0, False)):  # sigmoid(0) = 0.5 is not above 0.5
        nn.init.constant_(fcn.logits.bias, bias)
        assert fcn_masks(fcn, x).all().item() is want and not (fcn_masks(fcn, x) != want).any()


def test_overfitting_one_batch_lowers_the_loss():
    torch.manual_seed(0)
    regions = torch.rand(8, 3, 16, 16) * 2 - 1
    # the target is "red channel above 0": a per-pixel rule the head can learn
    targets = (regions[:, :1] > 0).float()
    fcn = FcnMaskHead(width=16)
    optimiser = torch.optim.Adam(fcn.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = fcn_loss(fcn, regions, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    fcn.eval()
    accuracy = (fcn_masks(fcn, regions) == targets.bool()).float().mean().item()
    assert accuracy > 0.9


# --- eval_maskdiff's masker hook -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy config (6 val images in batches of 4, 3 sampling seeds) with an untrained K-shot folder."""
    out = tmp_path_factory.mktemp("maskdiff-fcn")
    config = parse_maskdiff_config(
        {
            "run": {"name": "toy", "out_dir": str(out / "runs"), "device": "cpu", "threads": 1},
            "dataset": {"name": "toy", "toy": {"image_size": 64, "n_train": 120, "n_val": 16}},
            "detector": {"backbone": "tiny", "min_size": 64, "max_size": 64},
            "head": {"arch": "tiny", "size": 32, "sampler": "ddim", "ddim_steps": 2},
            "finetune": {"shots": SHOTS},
            "eval": {"max_images": IMAGES, "sampling_seeds": SEEDS, "batch_images": BATCH},
        }
    )
    dataset = open_dataset(config.dataset)
    fold = get_fold(dataset.name, config.dataset.fold)
    all_ids = sorted(fold.base + fold.novel)
    folder = Path(config.finetune_dir())
    folder.mkdir(parents=True)
    names = ("detector.safetensors", "mask_head.safetensors", "kshot.json")
    spec = replace(det.tiny_spec(len(all_ids)), detections_per_img=5)
    det.save_detector(str(folder / names[0]), det.build_detector(spec), spec, all_ids, {})
    hspec = head.tiny_spec(len(dataset.classes()), SHOTS)
    head.save_mask_head(folder / names[1], head.build_mask_head(hspec), hspec, {})
    chosen = kshot_instances(dataset, "train", all_ids, SHOTS, 0)
    classes = {str(c): [{"image_id": s.image_id, "index": s.index} for s in v] for c, v in chosen.items()}
    (folder / names[2]).write_text(json.dumps({"shots": SHOTS, "data_seed": 0, "classes": classes}))
    (folder / "COMPLETE.json").write_text(json.dumps({"files": {n: sha256_file(str(folder / n)) for n in names}}))
    return config, all_ids


def test_masker_replaces_the_sampler(world):
    config, all_ids = world
    calls = []
    fcn = FcnMaskHead(width=8).eval()

    def fcn_baseline(regions, class_ids):
        calls.append((tuple(regions.shape), list(class_ids), regions.min().item(), regions.max().item()))
        return fcn_masks(fcn, regions)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sample_masks must not run with a masker")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "sample_masks", no_sampling)
        result = evaluate.eval_maskdiff(config, log=lambda _: None, masker=fcn_baseline)
    assert result["masker"] == "fcn_baseline"
    assert len(calls) == -(-IMAGES // BATCH)  # once per batch, not per seed
    assert sum(c[0][0] for c in calls) == result["detections"] > 0
    assert all(c[0][1:] == (3, 32, 32) and len(c[1]) == c[0][0] and set(c[1]) <= set(all_ids) for c in calls)
    assert all(-1 <= c[2] and c[3] <= 1 for c in calls)  # region crops in [-1, 1]
    # one deterministic mask set stands for every seed: identical per-seed scores, std 0
    assert result["sampling_seeds"] == SEEDS and len(result["per_seed_segm"]) == SEEDS
    assert all(p == result["per_seed_segm"][0] for p in result["per_seed_segm"])
    assert all(result["segm"][name]["ap_std"] == 0.0 for name in ("all", "base", "novel"))


def test_masker_default_is_the_sampler(world):
    config, _ = world
    calls = []
    real = evaluate.sample_masks

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    one_seed = config.model_copy(update={"eval": config.eval.model_copy(update={"sampling_seeds": 1})})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "sample_masks", counting)
        result = evaluate.eval_maskdiff(one_seed, log=lambda _: None)
    assert result["masker"] == "sample_masks" and len(calls) == -(-IMAGES // BATCH)


def test_masker_with_wrong_output_is_a_config_error(world):
    config, _ = world
    with pytest.raises(ConfigError, match=r"masker: expected a bool tensor of shape \(\d+, 1, 32, 32\)"):
        evaluate.eval_maskdiff(config, log=lambda _: None, masker=lambda r, c: torch.ones(len(c), 1, 16, 16) > 0)
