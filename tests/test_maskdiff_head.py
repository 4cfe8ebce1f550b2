"""MaskDiff mask head: paper architecture, crops, Alg. 1 loss, guidance, Alg. 2 sampler, pasting, checkpoints."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from maskforge.models.maskdiff import mask_head
from maskforge.models.maskdiff.mask_head import (
    MaskHeadCheckpointError,
    MaskHeadError,
    MaskHeadSpec,
    build_mask_head,
    condition,
    diffusion_loss,
    guided_eps,
    load_mask_head,
    make_scheduler,
    mask_targets,
    paper_spec,
    paste_masks,
    region_crops,
    sample_masks,
    save_mask_head,
    support_crops,
    tiny_spec,
)

RED = (255, 0, 0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny():
    """A tiny head (3 classes, 2 shots, 32x32) in eval mode with its spec."""
    torch.manual_seed(0)
    spec = tiny_spec(3, 2)
    return build_mask_head(spec).eval(), spec


class Stub:
    """A fake UNet: records every call and returns fn(x, t, class_labels) as `.sample`."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def __call__(self, x, t, class_labels=None):
        self.calls.append((x.clone(), torch.as_tensor(t).clone(), class_labels.clone()))
        return SimpleNamespace(sample=self.fn(x, t, class_labels))


def _red_square_image() -> np.ndarray:
    """A 32x32 black image with a red square at rows/cols 8..23."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = RED
    return image


# --- architecture and bounds -------------------------------------------------------------------------------------


def test_paper_architecture():
    spec = paper_spec(20, 1)
    unet = build_mask_head(spec)
    assert tuple(unet.config.block_out_channels) == (128, 128, 256, 384, 512)
    assert [hasattr(b, "attentions") for b in unet.down_blocks] == [False, False, False, True, False]
    assert [b.resnets[0].out_channels for b in unet.down_blocks] == [128, 128, 256, 384, 512]
    # up blocks run deepest first: the 384 level is the second
    assert [hasattr(b, "attentions") for b in unet.up_blocks] == [False, True, False, False, False]
    assert [b.resnets[0].out_channels for b in unet.up_blocks] == [512, 384, 256, 128, 128]
    assert unet.up_blocks[1].resnets[0].out_channels == 384
    assert [len(b.resnets) for b in unet.down_blocks] == [2] * 5
    assert [len(b.resnets) for b in unet.up_blocks] == [3] * 5
    assert len(unet.mid_block.attentions) == 1 and unet.mid_block.attentions[0] is not None
    # three downsamplers before the 384 level: 128 / 8 = 16x16 attention
    assert sum(b.downsamplers is not None for b in unet.down_blocks[:3]) == 3
    assert unet.down_blocks[4].downsamplers is None
    assert unet.conv_in.in_channels == 7 and unet.conv_out.out_channels == 1
    assert tuple(unet.class_embedding.weight.shape) == (21, unet.time_embedding.linear_2.out_features)
    assert spec.null_class == 20 and spec.size == 128 and spec.norm_num_groups == 32
    assert paper_spec(20, 5).in_channels == 19
    with torch.device("meta"):
        five = build_mask_head(paper_spec(20, 5))
    assert five.conv_in.in_channels == 19


def test_tiny_architecture_attention_second_to_last(tiny):
    unet, spec = tiny
    assert spec.size == 32 and spec.block_out_channels == (16, 16, 32) and spec.attention_level == 1
    assert [hasattr(b, "attentions") for b in unet.down_blocks] == [False, True, False]
    assert [hasattr(b, "attentions") for b in unet.up_blocks] == [False, True, False]
    assert unet.conv_in.in_channels == 1 + 3 + 6
    assert unet.class_embedding.weight.shape[0] == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"shots": 0}, "shots"),
        ({"shots": 31}, "shots"),
        ({"size": 8}, "size"),
        ({"size": 512}, "size"),
        ({"size": 30}, "size"),  # not a multiple of 2^(3-1)
        ({"attention_level": 3}, "attention_level"),
        ({"num_classes": 0}, "num_classes"),
        ({"norm_num_groups": 5}, "block_out_channels"),
        ({"prediction_type": "sample"}, "prediction_type"),
    ],
)
def test_spec_bounds_name_the_field(kwargs, field):
    base = {
        "num_classes": 3,
        "shots": 2,
        "size": 32,
        "block_out_channels": (16, 16, 32),
        "attention_level": 1,
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    }
    with pytest.raises(MaskHeadError, match=field):
        MaskHeadSpec(**{**base, **kwargs})
    assert MaskHeadSpec(**{**base, "shots": 30, "size": 24}).shots == 30


# --- conditioning ------------------------------------------------------------------------------------------------


def test_region_crop_of_red_square_is_red():
    crops = region_crops(_red_square_image(), np.array([[8, 8, 24, 24], [0, 0, 32, 32]], np.float32), 16)
    assert crops.shape == (2, 3, 16, 16) and crops.dtype == torch.float32
    assert torch.allclose(crops[0, 0], torch.ones(16, 16)) and torch.allclose(crops[0, 1:], -torch.ones(2, 16, 16))
    # the whole image at half size (2x2 samples averaged per bin): the square covers crop pixels 4..11
    assert torch.allclose(crops[1, 0, 4:12, 4:12], torch.ones(8, 8)) and crops[1, 0, 0, 0] == -1.0
    assert crops.min() >= -1.0 and crops.max() <= 1.0


def test_region_crop_outside_the_image_reads_zero():
    crop = region_crops(_red_square_image(), [[-32, 0, 32, 32]], 16)[0]
    assert torch.allclose(crop[:, :, :7], torch.zeros(3, 16, 7))  # left half of the box lies left of the image
    assert crop[1, 0, 12] == -1.0


def test_support_crop_background_is_zero():
    image = _red_square_image()
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:16] = True  # left half of the square only
    crops = support_crops([image, image], [mask, mask], [[8, 8, 24, 24], [0, 0, 32, 32]], 16)
    assert crops.shape == (2, 3, 16, 16)
    assert torch.allclose(crops[0, :, :, :8], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 16, 8))
    assert torch.equal(crops[0, :, :, 8:], torch.zeros(3, 16, 8))
    # the whole image at half size: the masked half-square is crop rows 4..11, cols 4..7; all else is background
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    assert torch.allclose(crops[1, :, 4:12, 4:8], red.expand(3, 8, 4))
    keep = torch.zeros(16, 16, dtype=torch.bool)
    keep[4:12, 4:8] = True
    assert crops[1][:, ~keep].eq(0).all()
    with pytest.raises(MaskHeadError, match="masks"):
        support_crops([image], [mask.astype(np.uint8)], [[8, 8, 16, 16]], 16)
    with pytest.raises(MaskHeadError, match="shots"):
        support_crops([], [], np.zeros((0, 4)), 16)


def test_mask_targets_and_condition():
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    targets = mask_targets([mask, mask], [[4, 4, 20, 20], [8, 8, 16, 16]], 16)
    assert targets.shape == (2, 1, 16, 16)
    assert set(targets.unique().tolist()) == {-1.0, 1.0}
    expected = -torch.ones(16, 16)
    expected[4:12, 4:12] = 1.0
    assert torch.equal(targets[0, 0], expected) and torch.equal(targets[1, 0], torch.ones(16, 16))
    regions, supports = torch.zeros(5, 3, 16, 16), torch.arange(2.0)[:, None, None, None].expand(2, 3, 16, 16)
    cond = condition(regions, supports)
    assert cond.shape == (5, 9, 16, 16)
    assert cond[:, 3:6].eq(0).all() and cond[:, 6:9].eq(1).all()
    with pytest.raises(MaskHeadError, match="boxes"):
        mask_targets([mask], [[4, 4, 20, 20], [0, 0, 1, 1]], 16)
    with pytest.raises(MaskHeadError, match="boxes"):
        region_crops(_red_square_image(), [[10, 0, 5, 5]], 16)


# --- Alg. 1 ------------------------------------------------------------------------------------------------------


def _loss_case(n=4, seed=7):
    """x0, cond, class ids and the (t, eps) the loss will draw with Generator(seed)."""
    x0 = torch.where(torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5, 1.0, -1.0)
    cond = torch.randn(n, 9, 16, 16, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (n,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return x0, cond, torch.tensor([0, 1, 2, 0][:n]), t, eps


def test_loss_with_zero_model_is_mean_eps_squared():
    x0, cond, ids, t, eps = _loss_case()
    stub = Stub(lambda x, t, c: torch.zeros(x.shape[0], 1, *x.shape[-2:]))
    scheduler = make_scheduler("ddpm")
    loss = diffusion_loss(stub, scheduler, x0, cond, ids, 3, 0.0, torch.Generator().manual_seed(7))
    assert loss.ndim == 0 and torch.allclose(loss, eps.pow(2).mean())
    (x, t_seen, labels) = stub.calls[0]
    abar = scheduler.alphas_cumprod[t][:, None, None, None]
    assert torch.equal(t_seen, t)
    assert torch.allclose(x[:, :1], abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-6)
    assert torch.equal(x[:, 1:], cond) and torch.equal(labels, ids)


def test_loss_with_exact_model_is_zero():
    x0, cond, ids, _, eps = _loss_case()
    stub = Stub(lambda x, t, c: eps)
    loss = diffusion_loss(stub, make_scheduler("ddpm"), x0, cond, ids, 3, 0.0, torch.Generator().manual_seed(7))
    assert loss.item() == 0.0


def test_v_prediction_loss_target_is_the_velocity():
    x0, cond, ids, t, eps = _loss_case()
    scheduler = make_scheduler("ddpm", "v_prediction")
    abar = scheduler.alphas_cumprod[t][:, None, None, None]
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    zero = Stub(lambda x, t, c: torch.zeros(x.shape[0], 1, *x.shape[-2:]))
    loss = diffusion_loss(zero, scheduler, x0, cond, ids, 3, 0.0, torch.Generator().manual_seed(7))
    assert torch.allclose(loss, v.pow(2).mean())
    exact = Stub(lambda x, t, c: v)
    assert diffusion_loss(exact, scheduler, x0, cond, ids, 3, 0.0, torch.Generator().manual_seed(7)).item() < 1e-12
    with pytest.raises(MaskHeadError, match="prediction_type"):
        make_scheduler("ddim", "sample")


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_v_prediction_sampler_with_an_oracle_recovers_the_mask(kind, monkeypatch):
    # an oracle that knows x0 predicts v = sqrt(a) eps - sqrt(1 - a) x0 with eps read off x_t: both samplers must
    # land on x0 whatever the noise, with a scheduler built for v
    x0 = torch.where(torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5, 1.0, -1.0)
    abar_all = make_scheduler("ddpm").alphas_cumprod

    def oracle(x, t, c):
        a = abar_all[t.long()][:, None, None, None]
        xt = x[:, :1]
        eps = (xt - a.sqrt() * x0.repeat(2, 1, 1, 1)) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0.repeat(2, 1, 1, 1)

    built = []

    def spy(kind, prediction_type="epsilon"):
        built.append(make_scheduler(kind, prediction_type))
        return built[-1]

    monkeypatch.setattr(mask_head, "make_scheduler", spy)
    cond = torch.zeros(3, 9, 16, 16)
    masks = sample_masks(
        Stub(oracle), cond, [0, 1, 2], 3, 5.0, kind, 20, torch.Generator().manual_seed(0), "v_prediction"
    )
    assert [b.config.prediction_type for b in built] == ["v_prediction"]
    assert torch.equal(masks, x0 > 0)


def test_class_dropout():
    x0, cond, ids, _, _ = _loss_case()
    stub = Stub(lambda x, t, c: torch.zeros(x.shape[0], 1, *x.shape[-2:]))
    scheduler = make_scheduler("ddpm")
    for seed in range(5):
        diffusion_loss(stub, scheduler, x0, cond, ids, 3, 1.0, torch.Generator().manual_seed(seed))
        assert stub.calls[-1][2].eq(3).all()
        diffusion_loss(stub, scheduler, x0, cond, ids, 3, 0.0, torch.Generator().manual_seed(seed))
        assert torch.equal(stub.calls[-1][2], ids)
    n = 200
    many = diffusion_loss(
        stub,
        scheduler,
        torch.ones(n, 1, 16, 16),
        torch.zeros(n, 9, 16, 16),
        torch.zeros(n, dtype=torch.long),
        3,
        0.5,
        torch.Generator().manual_seed(0),
    )
    dropped = stub.calls[-1][2].eq(3).sum().item()
    assert many.ndim == 0 and 60 < dropped < 140
    with pytest.raises(MaskHeadError, match="p_uncond"):
        diffusion_loss(stub, scheduler, x0, cond, ids, 3, 1.5)
    with pytest.raises(MaskHeadError, match="class_ids"):
        diffusion_loss(stub, scheduler, x0, cond, torch.tensor([0, 1, 4, 0]), 3, 0.0)


def test_loss_on_the_tiny_unet_backpropagates(tiny):
    unet, spec = tiny
    x0 = torch.where(torch.rand(2, 1, 32, 32) > 0.5, 1.0, -1.0)
    loss = diffusion_loss(unet, make_scheduler(), x0, torch.zeros(2, 9, 32, 32), [0, 2], 3, 0.1, torch.Generator())
    loss.backward()
    assert torch.isfinite(loss) and unet.class_embedding.weight.grad is not None
    unet.zero_grad(set_to_none=True)
    with pytest.raises(MaskHeadError, match="cond"):
        diffusion_loss(unet, make_scheduler(), x0, torch.zeros(2, 6, 32, 32), [0, 2], 3, 0.1)
    with pytest.raises(MaskHeadError, match="null_class"):
        diffusion_loss(unet, make_scheduler(), x0, torch.zeros(2, 9, 32, 32), [0, 2], 4, 0.1)


# --- Alg. 2 ------------------------------------------------------------------------------------------------------


def _class_stub():
    """A stub UNet whose eps is class_label * ones."""
    return Stub(lambda x, t, c: c.float()[:, None, None, None].expand(x.shape[0], 1, *x.shape[-2:]).clone())


@pytest.mark.parametrize(("w", "value"), [(5.0, 5 * 2 - 4 * 7), (1.0, 2.0), (0.0, 7.0)])
def test_guidance_formula_in_one_forward(w, value):
    stub = _class_stub()
    x_t, cond = torch.zeros(3, 1, 16, 16), torch.zeros(3, 9, 16, 16)
    eps = guided_eps(stub, x_t, torch.tensor(500), cond, torch.tensor([2, 2, 2]), 7, w)
    assert eps.shape == (3, 1, 16, 16) and torch.allclose(eps, torch.full_like(eps, value))
    assert len(stub.calls) == 1
    x, t, labels = stub.calls[0]
    assert x.shape == (6, 10, 16, 16) and labels.tolist() == [2, 2, 2, 7, 7, 7] and t.tolist() == [500] * 6


def test_guidance_bounds():
    with pytest.raises(MaskHeadError, match="w"):
        guided_eps(_class_stub(), torch.zeros(1, 1, 16, 16), 1, torch.zeros(1, 9, 16, 16), [0], 3, 20.5)
    with pytest.raises(MaskHeadError, match="w"):
        guided_eps(_class_stub(), torch.zeros(1, 1, 16, 16), 1, torch.zeros(1, 9, 16, 16), [0], 3, -0.1)


def test_sampler_one_batched_forward_per_step():
    cond = torch.zeros(3, 9, 16, 16)
    stub = Stub(lambda x, t, c: torch.zeros(x.shape[0], 1, *x.shape[-2:]))
    masks = sample_masks(stub, cond, [0, 1, 2], 3, 5.0, "ddim", 5, torch.Generator().manual_seed(0))
    assert masks.shape == (3, 1, 16, 16) and masks.dtype == torch.bool
    assert len(stub.calls) == 5 and all(x.shape[0] == 6 for x, _, _ in stub.calls)
    ts = [int(t[0]) for _, t, _ in stub.calls]
    assert ts == sorted(ts, reverse=True) and ts[-1] == 0
    stub.calls.clear()
    sample_masks(stub, cond, [0, 1, 2], 3, generator=torch.Generator().manual_seed(0))
    assert len(stub.calls) == 1000 and all(x.shape[0] == 6 for x, _, _ in stub.calls)
    assert [int(t[0]) for _, t, _ in stub.calls[:2]] == [999, 998]


def test_sampler_on_tiny_unet_is_deterministic(tiny):
    unet, _ = tiny
    cond = torch.randn(3, 9, 32, 32, generator=torch.Generator().manual_seed(3))

    def run(kind, steps, seed):
        return sample_masks(unet, cond, [0, 1, 2], 3, 5.0, kind, steps, torch.Generator().manual_seed(seed))

    first = run("ddpm", 10, 0)
    assert first.shape == (3, 1, 32, 32) and first.dtype == torch.bool
    assert torch.equal(first, run("ddpm", 10, 0))
    assert not torch.equal(first, run("ddpm", 10, 1))
    ddim = run("ddim", 5, 0)
    assert ddim.shape == (3, 1, 32, 32) and torch.equal(ddim, run("ddim", 5, 0))
    assert sample_masks(unet, cond[:0], [], 3, 5.0, "ddim", 5).shape == (0, 1, 32, 32)


def test_sampler_bounds(tiny):
    unet, _ = tiny
    cond = torch.zeros(1, 9, 32, 32)
    for steps in (0, 1001):
        with pytest.raises(MaskHeadError, match="steps"):
            sample_masks(unet, cond, [0], 3, 5.0, "ddim", steps)
    with pytest.raises(MaskHeadError, match="w"):
        sample_masks(unet, cond, [0], 3, 21.0, "ddim", 2)
    with pytest.raises(MaskHeadError, match="scheduler_kind"):
        sample_masks(unet, cond, [0], 3, 5.0, "euler", 2)


def test_schedulers_share_the_training_config():
    ddpm, ddim = make_scheduler("ddpm"), make_scheduler("ddim")
    for s in (ddpm, ddim):
        cfg = s.config
        assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end) == (
            1000,
            "linear",
            1e-4,
            0.02,
        )
        assert cfg.prediction_type == "epsilon"
    assert ddpm.config.clip_sample and not ddim.config.clip_sample  # DDIM clipping collapses guided sampling
    assert torch.allclose(ddpm.alphas_cumprod, ddim.alphas_cumprod)


# --- pasting -----------------------------------------------------------------------------------------------------


def test_paste_masks_geometry():
    full = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    left = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    left[..., :4] = True
    masks = torch.cat([full, left, full, left, full])
    boxes = [[4, 6, 12, 10], [4, 6, 12, 10], [-4, -4, 4, 4], [-4, 0, 4, 4], [5, 5, 5, 9]]
    out = paste_masks(masks, boxes, (16, 20))
    assert out.shape == (5, 16, 20) and out.dtype == torch.bool
    expected = torch.zeros(16, 20, dtype=torch.bool)
    expected[6:10, 4:12] = True
    assert torch.equal(out[0], expected)
    expected[6:10, 8:12] = False
    assert torch.equal(out[1], expected)
    corner = torch.zeros(16, 20, dtype=torch.bool)
    corner[:4, :4] = True
    assert torch.equal(out[2], corner)
    assert not out[3].any()  # the mask's left half lies left of the image
    assert not out[4].any()  # zero width


def test_paste_fractional_box_takes_pixels_whose_centre_is_inside():
    out = paste_masks(torch.ones(1, 1, 8, 8, dtype=torch.bool), [[4.6, 5.4, 12.4, 9.6]], (16, 20))[0]
    expected = torch.zeros(16, 20, dtype=torch.bool)
    expected[5:10, 5:12] = True  # centres 5.5..9.5 in [5.4, 9.6], 5.5..11.5 in [4.6, 12.4]
    assert torch.equal(out, expected)


def test_paste_matches_interpolate_on_an_integer_box():
    mask = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5
    out = paste_masks(mask, [[3, 2, 26, 13]], (20, 30))[0]
    resized = F.interpolate(mask.float(), size=(11, 23), mode="bilinear", align_corners=False)[0, 0] > 0.5
    assert torch.equal(out[2:13, 3:26], resized) and out.sum() == resized.sum()


# --- checkpoints -------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tiny, tmp_path):
    unet, spec = tiny
    path = save_mask_head(tmp_path / "head.safetensors", unet, spec, {"fold": 1, "shots": 2})
    loaded, spec2, meta = load_mask_head(path)
    assert spec2 == spec and meta == {"fold": 1, "shots": 2}
    state, state2 = unet.state_dict(), loaded.state_dict()
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    assert [p.name for p in tmp_path.iterdir()] == ["head.safetensors"]


def test_prediction_type_travels_with_the_checkpoint(tiny, tmp_path):
    unet, spec = tiny
    v_spec = dataclasses.replace(spec, prediction_type="v_prediction")
    _, loaded, _ = load_mask_head(save_mask_head(tmp_path / "v.safetensors", unet, v_spec, {}))
    assert loaded.prediction_type == "v_prediction"
    # a checkpoint written before the field existed reads as the paper's epsilon head
    old = {k: v for k, v in dataclasses.asdict(spec).items() if k != "prediction_type"}
    assert MaskHeadSpec(**old).prediction_type == "epsilon"


def test_load_mismatch_names_the_file(tiny, tmp_path):
    unet, spec = tiny
    wrong = save_mask_head(tmp_path / "wrong.safetensors", unet, tiny_spec(3, 3), {})
    with pytest.raises(MaskHeadCheckpointError, match=r"wrong\.safetensors.*mis-shaped.*conv_in"):
        load_mask_head(wrong)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(MaskHeadCheckpointError, match=r"bare\.safetensors.*maskdiff_spec"):
        load_mask_head(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(MaskHeadCheckpointError, match=r"junk\.safetensors"):
        load_mask_head(junk)
    with pytest.raises(MaskHeadCheckpointError, match=r"absent\.safetensors"):
        load_mask_head(tmp_path / "absent.safetensors")
