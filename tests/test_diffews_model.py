"""DiffewS model code on the toy SD: KV-fusion processor maths, bank routing, conv_in_ref, OI2M codec, checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from maskforge.models.diffews.checkpoint import (
    DiffewsCheckpointError,
    build_from_sd,
    empty_prompt_embedding,
    key_report,
    load_diffews,
    load_diffews_unet,
    load_frozen_parts,
    save_diffews,
)
from maskforge.models.diffews.codec import decode_rgb, encode, masks_to_rgb, threshold_masks
from maskforge.models.diffews.kv_fusion import KVBank, KVFusionProcessor, install_kv_fusion
from maskforge.models.diffews.network import OI2M_TIMESTEP, DiffewsModelError, DiffewsNet

TOY_SD = Path(__file__).resolve().parents[1] / "models" / "toy" / "sd"
LATENT = 16
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def parts():
    """The toy SD's DiffewS UNet, VAE, tokenizer, text encoder and empty-prompt embedding, loaded once."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    unet = build_from_sd(str(TOY_SD))
    vae, tokenizer, encoder = load_frozen_parts(str(TOY_SD))
    return {"unet": unet, "vae": vae, "tokenizer": tokenizer, "encoder": encoder}


@pytest.fixture(scope="module")
def embedding(parts):
    """The empty-prompt embedding of the toy text encoder."""
    return empty_prompt_embedding(parts["tokenizer"], parts["encoder"])


@pytest.fixture(scope="module")
def net(parts, embedding):
    """A DiffewsNet on the toy parts (eval mode); tests leave its bank cleared and grads zeroed."""
    return DiffewsNet(parts["unet"], parts["vae"], embedding).eval()


@pytest.fixture()
def clean_net(net):
    """The shared net, with its bank cleared and grads dropped after the test."""
    yield net
    net.bank.clear()
    net.bank.key_tokens.clear()
    net.zero_grad(set_to_none=True)


def latents(n, seed, size=LATENT):
    """Deterministic random 4-channel latents."""
    return torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


def tokens(*shape, seed):
    """Deterministic random token features."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def small_attention():
    """A small diffusers Attention (32 channels, 2 heads of 16) with seeded weights, in eval mode."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(1)
    return Attention(query_dim=32, heads=2, dim_head=16).eval()


def stock_output(attn, hidden):
    """The output of diffusers' AttnProcessor2_0 on `attn`."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        return attn(hidden)


def fused(attn, name="layer"):
    """Put a KVFusionProcessor on a fresh bank on `attn`; returns the bank."""
    bank = KVBank()
    attn.set_processor(KVFusionProcessor(bank, name))
    return bank


def fill(attn, bank, hidden, groups=1):
    """Run a support pass of `hidden` through `attn` in write mode, then switch the bank to read mode."""
    bank.groups = groups
    bank.mode = "write"
    with torch.no_grad():
        attn(hidden)
    bank.mode = "read"


def attention_modules(unet, suffix):
    """{module name: Attention module} of a UNet's attn1 or attn2 layers."""
    return {name: m for name, m in unet.named_modules() if name.endswith(suffix)}


# --- 1. install_kv_fusion -----------------------------------------------------------------------------------------


def test_install_kv_fusion_fuses_only_self_attention(parts):
    """Every attn1 gets a KVFusionProcessor on the bank; every attn2 keeps diffusers' stock processor class."""
    fresh = build_from_sd(str(TOY_SD))
    stock = {name: type(proc) for name, proc in fresh.attn_processors.items()}
    bank = KVBank()
    names = install_kv_fusion(fresh, bank)
    procs = fresh.attn_processors
    attn1 = sorted(n for n in procs if n.endswith("attn1.processor"))
    attn2 = sorted(n for n in procs if n.endswith("attn2.processor"))
    assert len(attn1) == 7 and len(attn2) == 7
    assert sorted(names) == attn1
    for name in attn1:
        assert isinstance(procs[name], KVFusionProcessor)
        assert procs[name].bank is bank and procs[name].name == name
    for name in attn2:
        assert not isinstance(procs[name], KVFusionProcessor)
        assert type(procs[name]) is stock[name]
        assert type(procs[name]).__name__ == "AttnProcessor2_0"


# --- 2. processor maths ---------------------------------------------------------------------------------------------


def test_processor_bank_off_matches_stock():
    """With the bank off the fused processor is diffusers' AttnProcessor2_0."""
    attn = small_attention()
    x = tokens(2, 6, 32, seed=2)
    expected = stock_output(attn, x)
    bank = fused(attn)
    with torch.no_grad():
        out = attn(x)
    assert out.shape == (2, 6, 32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert bank.keys == {} and bank.key_tokens == {}


def test_processor_same_support_leaves_output_unchanged():
    """Keys/values duplicated by a support equal to the query leave every softmax average unchanged."""
    attn = small_attention()
    x = tokens(1, 6, 32, seed=3)
    expected = stock_output(attn, x)
    bank = fused(attn)
    fill(attn, bank, x)
    assert bank.keys["layer"][0].shape == (1, 6, 32)
    with torch.no_grad():
        out = attn(x)
    assert bank.key_tokens == {"layer": 12}
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_processor_different_support_changes_output():
    """A support unlike the query changes the attended output."""
    attn = small_attention()
    x = tokens(1, 6, 32, seed=4)
    expected = stock_output(attn, x)
    bank = fused(attn)
    fill(attn, bank, tokens(1, 6, 32, seed=5) * 3.0)
    with torch.no_grad():
        out = attn(x)
    assert (out - expected).abs().max() > 1e-3


def test_processor_n_shot_groups_match_hand_written_attention():
    """3 supports × 2 episodes (episode-major): each query attends over [its tokens, its own 3 supports' tokens]."""
    attn = small_attention()
    queries = tokens(2, 5, 32, seed=6)
    supports = tokens(6, 4, 32, seed=7) * 2.0
    bank = fused(attn)
    fill(attn, bank, supports, groups=2)
    assert bank.keys["layer"][0].shape == (2, 12, 32)
    with torch.no_grad():
        out = attn(queries)
        expected = []
        for g in range(2):
            context = torch.cat([queries[g], supports[3 * g], supports[3 * g + 1], supports[3 * g + 2]])
            q, k, v = attn.to_q(queries[g]), attn.to_k(context), attn.to_v(context)
            heads = []
            for h in range(2):
                sl = slice(16 * h, 16 * (h + 1))
                weights = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(16), dim=-1)
                heads.append(weights @ v[:, sl])
            expected.append(attn.to_out[0](torch.cat(heads, dim=-1)))
    assert bank.key_tokens == {"layer": 5 + 12}
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_processor_single_group_broadcasts_over_queries():
    """One support group serves a batch of 2 queries exactly as it serves each query alone."""
    attn = small_attention()
    queries = tokens(2, 6, 32, seed=8)
    bank = fused(attn)
    fill(attn, bank, tokens(2, 6, 32, seed=9), groups=1)
    with torch.no_grad():
        both = attn(queries)
        alone = torch.cat([attn(queries[i : i + 1]) for i in range(2)])
    assert bank.key_tokens == {"layer": 6 + 12}
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both[0], both[1], atol=1e-3)


# --- 3. the bank touches self-attention only ------------------------------------------------------------------------


def test_bank_changes_self_attention_only(clean_net):
    """With a filled bank in read mode, every attn2 output is unchanged and every attn1 output differs."""
    net = clean_net
    with torch.no_grad():
        net.support_pass(latents(1, 10), latents(1, 11), groups=1)
    text = net.text_embedding
    for suffix, should_change in (("attn1", True), ("attn2", False)):
        modules = attention_modules(net.unet, suffix)
        assert len(modules) == 7
        for i, (name, module) in enumerate(modules.items()):
            x = tokens(1, 16, module.to_q.in_features, seed=100 + i)
            context = text if suffix == "attn2" else None
            with torch.no_grad():
                net.bank.mode = "off"
                off = module(x, encoder_hidden_states=context)
                net.bank.mode = "read"
                read = module(x, encoder_hidden_states=context)
            assert off.shape == read.shape == x.shape
            if should_change:
                assert (off - read).abs().max() > 1e-4, name
            else:
                torch.testing.assert_close(read, off, rtol=0, atol=0, msg=name)


# --- 4. n supports give n·tokens keys -------------------------------------------------------------------------------


def attn1_tokens(net, query):
    """{processor name: token count of each attn1 input} from a plain UNet forward with the bank off."""
    seen = {}
    hooks = []
    for name, module in attention_modules(net.unet, "attn1").items():

        def hook(mod, args, kwargs, name=name):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[f"{name}.processor"] = hidden.shape[1]

        hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            net.bank.mode = "off"
            net._unet(query)
    finally:
        for h in hooks:
            h.remove()
    return seen


def expected_tokens(name):
    """Tokens of a toy UNet layer from the 16×16 latent: each down block but the last halves the side."""
    levels = 3
    block, rest = name.split(".", 1)
    if block == "mid_block":
        level = levels - 1
    else:
        index = int(rest.split(".")[0])
        level = index if block == "down_blocks" else levels - 1 - index
    return (LATENT // 2**level) ** 2


@pytest.mark.parametrize("shots", [1, 3])
def test_n_supports_give_n_times_tokens_keys(clean_net, shots):
    """After net(q, s, m) with 2 queries and n supports each, every fused layer attended over (1+n)·its tokens."""
    net = clean_net
    query = latents(2, 20)
    per_layer = attn1_tokens(net, query)
    assert sorted(per_layer) == sorted(net.fused_layers)
    assert per_layer == {name: expected_tokens(name) for name in net.fused_layers}
    assert per_layer["down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"] == 64
    assert per_layer["mid_block.attentions.0.transformer_blocks.0.attn1.processor"] == 16
    net.bank.key_tokens.clear()
    with torch.no_grad():
        out = net(query, latents(2 * shots, 21), latents(2 * shots, 22))
    assert out.shape == (2, 4, LATENT, LATENT)
    assert net.bank.key_tokens == {name: n * (1 + shots) for name, n in per_layer.items()}
    assert net.bank.mode == "off" and net.bank.keys == {} and net.bank.values == {}


# --- 5. gradients ---------------------------------------------------------------------------------------------------


def test_query_loss_reaches_conv_in_ref(clean_net):
    """conv_in_ref runs only in the support pass; a query loss reaches it through the bank's K/V."""
    net = clean_net
    net.zero_grad(set_to_none=True)
    pred = net(latents(2, 30), latents(4, 31), latents(4, 32))
    pred.square().mean().backward()
    grad = net.unet.conv_in_ref.weight.grad
    assert grad is not None and grad.shape == (32, 8, 3, 3)
    assert grad.abs().sum() > 0
    assert net.unet.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.vae.parameters())


# --- 6. conv_in_ref init --------------------------------------------------------------------------------------------


def test_conv_in_ref_starts_as_conv_in(parts):
    """conv_in_ref([x, x]) == conv_in(x): the kernel repeated over both groups and halved."""
    unet = parts["unet"]
    assert unet.conv_in_ref.weight.shape == (unet.conv_in.out_channels, 8, 3, 3) == (32, 8, 3, 3)
    assert unet.config.in_channels_ref == 8
    x = latents(2, 40)
    with torch.no_grad():
        torch.testing.assert_close(unet.conv_in_ref(torch.cat([x, x], 1)), unet.conv_in(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(unet.conv_in_ref(torch.cat([x, -x], 1)), unet.conv_in(x), atol=1e-3)


# --- 7. OI2M --------------------------------------------------------------------------------------------------------


def test_query_pass_is_negated_unet_output_at_t1(clean_net, embedding):
    """query_pass = -UNet(q, t=1, empty prompt) attending over the bank."""
    net = clean_net
    query = latents(2, 50)
    text = embedding.expand(2, -1, -1)
    assert OI2M_TIMESTEP == 1
    torch.testing.assert_close(net.text_embedding, embedding, rtol=0, atol=0)
    with torch.no_grad():
        net.support_pass(latents(2, 51), latents(2, 52), groups=2)
        pred = net.query_pass(query)
        assert net.bank.mode == "off"
        net.bank.mode = "read"
        direct = net.unet(query, torch.tensor([1, 1]), encoder_hidden_states=text).sample
        other_t = net.unet(query, torch.tensor([500, 500]), encoder_hidden_states=text).sample
        net.bank.mode = "off"
        no_bank = net.unet(query, torch.tensor([1, 1]), encoder_hidden_states=text).sample
    assert pred.shape == (2, 4, LATENT, LATENT)
    torch.testing.assert_close(pred, -direct, rtol=1e-5, atol=1e-6)
    assert (pred + other_t).abs().max() > 1e-3
    assert (pred + no_bank).abs().max() > 1e-4


def test_query_pass_negates_whatever_the_unet_returns(clean_net, monkeypatch):
    """The prediction is the negation of the one UNet call (bank in read mode during it)."""
    net = clean_net
    seen = {}
    fixed = tokens(1, 4, LATENT, LATENT, seed=53)

    def fake(x):
        seen["mode"] = net.bank.mode
        return fixed

    monkeypatch.setattr(net, "_unet", fake)
    out = net.query_pass(latents(1, 54))
    assert seen["mode"] == "read" and net.bank.mode == "off"
    assert torch.equal(out, -fixed)


def shape_mask():
    """A 64 px mask: a rectangle and a disc."""
    yy, xx = np.mgrid[:64, :64]
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:28, 6:40] = True
    mask |= (yy - 44) ** 2 + (xx - 40) ** 2 < 12**2
    return mask


def iou(a, b):
    """Intersection over union of two boolean masks."""
    return (a & b).sum() / (a | b).sum()


def test_mask_round_trip_through_toy_vae(parts):
    """mask -> ±1 RGB -> VAE mean latent -> decode -> threshold recovers the mask; black stays empty with the floor."""
    vae = parts["vae"]
    mask = shape_mask()
    black = np.zeros((64, 64), dtype=bool)
    rgb = masks_to_rgb([mask, black], 64, CPU)
    assert rgb.shape == (2, 3, 64, 64)
    assert set(rgb.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(rgb[0, 1] > 0, torch.from_numpy(mask)) and bool((rgb[1] == -1).all())
    with torch.no_grad():
        z = encode(vae, rgb)
        assert z.shape == (2, 4, LATENT, LATENT)
        torch.testing.assert_close(encode(vae, rgb), z, rtol=0, atol=0)
        decoded = decode_rgb(vae, z)
    assert decoded.shape == (2, 3, 64, 64) and decoded.min() >= 0 and decoded.max() <= 1
    got, empty = threshold_masks(decoded, [(64, 64), (64, 64)], relative=0.5, floor=0.4, rule="mean-floor")
    assert got.shape == (64, 64) and got.dtype == bool
    assert iou(got, mask) > 0.9
    assert empty.sum() == 0
    _, noise = threshold_masks(decoded, [(64, 64), (64, 64)], relative=0.25, floor=0.0, rule="mean-floor")
    assert noise.sum() > 0


# --- 8. empty prompt ------------------------------------------------------------------------------------------------


def test_empty_prompt_embedding_shape_and_determinism(parts, embedding):
    """(1, 77, 32) for the toy text encoder, the same tensor on every call."""
    assert embedding.shape == (1, 77, 32) and embedding.dtype == torch.float32
    again = empty_prompt_embedding(parts["tokenizer"], parts["encoder"])
    assert torch.equal(embedding, again)
    assert embedding.abs().sum() > 0


# --- 9. bad input ---------------------------------------------------------------------------------------------------


def test_forward_rejects_zero_supports(clean_net):
    """No support at all is an error naming the supports."""
    with pytest.raises(DiffewsModelError, match=r"supports: .*got 0"):
        clean_net(latents(1, 60), latents(0, 61), latents(0, 62))
    assert clean_net.bank.mode == "off"


def test_forward_rejects_supports_of_another_size(clean_net):
    """Support latents of another spatial size than the query are an error naming both sizes."""
    with pytest.raises(DiffewsModelError, match=r"supports: .*\(8, 8\).*\(16, 16\)"):
        clean_net(latents(1, 63), latents(1, 64, size=8), latents(1, 65, size=8))


def test_diffusers_own_gradient_checkpointing_is_refused_in_training(clean_net):
    """diffusers' checkpointing recomputes a layer in backward without the bank: training with it is an error."""
    clean_net.unet.enable_gradient_checkpointing()
    try:
        with pytest.raises(DiffewsModelError, match="use DiffewsNet.enable_gradient_checkpointing"):
            clean_net(latents(1, 70), latents(1, 71), latents(1, 72))
        with torch.no_grad():  # inference recomputes nothing
            assert clean_net(latents(1, 70), latents(1, 71), latents(1, 72)).shape == (1, 4, 16, 16)
    finally:
        clean_net.unet.disable_gradient_checkpointing()
    assert clean_net.bank.mode == "off" and not clean_net.bank.keys


def gradients(net) -> dict[str, torch.Tensor]:
    """Loss and UNet parameter gradients of one 2-episode, 2-shot forward and backward (grads zeroed before)."""
    net.zero_grad(set_to_none=True)
    pred = net(latents(2, 80), latents(4, 81), latents(4, 82))
    loss = (pred - latents(2, 83)).square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.unet.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), "pred": pred.detach(), **grads}


def test_gradient_checkpointing_through_the_bank_gives_the_plain_gradients(clean_net):
    """Recomputed blocks replay the bank as their forward call saw it: loss, output and every gradient (conv_in_ref's,
    reached through the bank, included) equal the plain pass's, and blocks really were recomputed."""
    plain = gradients(clean_net)
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    clean_net.enable_gradient_checkpointing()
    try:
        torch.utils.checkpoint.checkpoint = counting
        replayed = gradients(clean_net)
    finally:
        torch.utils.checkpoint.checkpoint = original
        clean_net.disable_gradient_checkpointing()
    assert calls and set(calls) == {False}  # checkpointed blocks in both passes, non-reentrant
    assert replayed.keys() == plain.keys() and "conv_in_ref.weight" in plain
    for name, value in plain.items():
        torch.testing.assert_close(replayed[name], value, rtol=1e-5, atol=1e-7, msg=name)
    assert plain["conv_in_ref.weight"].abs().sum() > 0
    assert clean_net.bank.mode == "off" and not clean_net.bank.keys


def test_a_bank_that_is_not_replayed_changes_what_recomputation_sees(clean_net, monkeypatch):
    """The replay is what makes it work: recomputing with the bank as it is after the forward pass (off, cleared)
    gives other tensors than the forward pass saved, and torch refuses them."""
    clean_net.enable_gradient_checkpointing()
    monkeypatch.setattr(KVBank, "replaying", lambda self, captured: contextlib.nullcontext())
    try:
        pred = clean_net(latents(2, 80), latents(4, 81), latents(4, 82))
        with pytest.raises(torch.utils.checkpoint.CheckpointError):
            pred.square().mean().backward()
    finally:
        clean_net.disable_gradient_checkpointing()


def test_forward_rejects_uneven_support_count(clean_net):
    """3 supports cannot be split over 2 queries."""
    with pytest.raises(DiffewsModelError, match=r"supports: 3 support latents .* 2 queries"):
        clean_net(latents(2, 66), latents(3, 67), latents(3, 68))
    assert clean_net.bank.mode == "off" and clean_net.bank.keys == {}


def toy_unet_config():
    """The toy SD UNet's config.json as a dict."""
    return json.loads((TOY_SD / "unet" / "config.json").read_text())


def test_eight_channel_unet_config_rejected(tmp_path):
    """A UNet folder whose config has in_channels 8 is a DiffewsModelError naming its config.json."""
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**toy_unet_config(), "in_channels": 8}))
    with pytest.raises(DiffewsModelError, match=r"config\.json has in_channels 8"):
        key_report(folder)
    with pytest.raises(DiffewsModelError, match=r"config\.json has in_channels 8"):
        load_diffews_unet(folder)


def test_build_from_sd_rejects_eight_channel_unet(tmp_path):
    """build_from_sd on an SD folder whose unet/config.json says in_channels 8 names that file."""
    sd = tmp_path / "sd"
    shutil.copytree(TOY_SD, sd)
    config = sd / "unet" / "config.json"
    config.write_text(json.dumps({**toy_unet_config(), "in_channels": 8}))
    with pytest.raises(DiffewsModelError, match=r"unet/config\.json has in_channels 8"):
        build_from_sd(str(sd))


def write_unet_folder(folder, unet, state):
    """A DiffewS UNet folder: the UNet's config.json and `state` as its safetensors weights."""
    folder.mkdir(parents=True)
    unet.save_config(folder)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder / "diffusion_pytorch_model.safetensors"


def test_weights_without_conv_in_ref_are_reported(tmp_path, parts):
    """A weights file missing conv_in_ref.* reports exactly those keys missing; the strict load names the file."""
    unet = parts["unet"]
    state = {k: v for k, v in unet.state_dict().items() if not k.startswith("conv_in_ref.")}
    file = write_unet_folder(tmp_path / "unet", unet, state)
    report, built, read = key_report(tmp_path / "unet")
    assert report.missing == ["conv_in_ref.bias", "conv_in_ref.weight"]
    assert report.unexpected == [] and report.mis_shaped == [] and not report.ok
    assert report.tensors == len(state) == len(read) and report.file == str(file)
    assert hasattr(built, "conv_in_ref")
    assert "2 missing (conv_in_ref.bias, conv_in_ref.weight)" in report.summary()
    with pytest.raises(DiffewsCheckpointError, match=r"diffusion_pytorch_model\.safetensors.*conv_in_ref\.bias"):
        load_diffews_unet(tmp_path / "unet")


def test_sd_unet_folder_lacks_conv_in_ref(parts):
    """The plain SD UNet folder is not a DiffewS UNet: conv_in_ref is all that is missing."""
    report, _, _ = key_report(TOY_SD / "unet")
    assert report.missing == ["conv_in_ref.bias", "conv_in_ref.weight"] and not report.unexpected
    with pytest.raises(DiffewsCheckpointError, match="diffusion_pytorch_model.safetensors"):
        load_diffews_unet(TOY_SD / "unet")


def test_mis_shaped_and_unexpected_keys_are_reported(tmp_path, parts):
    """A 4-channel conv_in_ref is reported mis-shaped, an extra tensor unexpected; the strict load refuses both."""
    unet = parts["unet"]
    state = dict(unet.state_dict())
    state["conv_in_ref.weight"] = torch.zeros(32, 4, 3, 3)
    write_unet_folder(tmp_path / "shape", unet, state)
    report, _, _ = key_report(tmp_path / "shape")
    assert report.mis_shaped == ["conv_in_ref.weight (32, 4, 3, 3) != (32, 8, 3, 3)"]
    assert report.missing == [] and report.unexpected == []
    with pytest.raises(DiffewsCheckpointError, match="mis-shaped"):
        load_diffews_unet(tmp_path / "shape")

    extra = {**unet.state_dict(), "extra_head.weight": torch.ones(3)}
    write_unet_folder(tmp_path / "extra", unet, extra)
    report, _, _ = key_report(tmp_path / "extra")
    assert report.unexpected == ["extra_head.weight"]
    assert report.missing == [] and report.mis_shaped == []
    with pytest.raises(DiffewsCheckpointError, match="extra_head.weight"):
        load_diffews_unet(tmp_path / "extra")


def test_complete_weights_load(tmp_path, parts):
    """The same folder with every key right is ok and loads the exact tensors."""
    unet = parts["unet"]
    write_unet_folder(tmp_path / "unet", unet, dict(unet.state_dict()))
    report, _, _ = key_report(tmp_path / "unet")
    assert report.ok
    loaded = load_diffews_unet(tmp_path / "unet")
    for key, value in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# --- 10. save / load ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, parts, embedding):
    """Tensors, text embedding and metadata come back; COMPLETE.json lists sha256s of the three files."""
    unet = parts["unet"]
    out = save_diffews(tmp_path / "ckpt", unet, embedding, {"step": 7, "fold": 2})
    assert out == tmp_path / "ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded, text, meta = load_diffews(out)
    assert meta["step"] == 7 and meta["fold"] == 2
    assert sorted(meta["files"]) == sorted(
        ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_embedding.safetensors"]
    )
    assert loaded.config.in_channels_ref == 8
    assert torch.equal(text, embedding)
    original = unet.state_dict()
    state = loaded.state_dict()
    assert sorted(state) == sorted(original)
    for key, value in original.items():
        assert torch.equal(state[key], value), key


def test_float16_storage_loads_as_float32(tmp_path, parts, embedding):
    """float16 storage halves the weight file and loads back as float32 close to the original."""
    unet = parts["unet"]
    full = save_diffews(tmp_path / "full", unet, embedding, {})
    half = save_diffews(tmp_path / "half", unet, embedding, {}, dtype=torch.float16)
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (half / name).stat().st_size < 0.6 * (full / name).stat().st_size
    loaded, text, _ = load_diffews(half)
    assert torch.equal(text, embedding)
    for key, value in unet.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == torch.float32, key
        torch.testing.assert_close(got, value, rtol=1e-3, atol=1e-4, msg=key)


def test_tampered_file_fails_sha256(tmp_path, parts, embedding):
    """One flipped byte of text_embedding.safetensors is a DiffewsCheckpointError naming sha256."""
    out = save_diffews(tmp_path / "ckpt", parts["unet"], embedding, {})
    file = out / "text_embedding.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(DiffewsCheckpointError, match=r"text_embedding\.safetensors.*sha256"):
        load_diffews(out)


def test_folder_without_marker_is_incomplete(tmp_path, parts, embedding):
    """A checkpoint folder without COMPLETE.json is refused, naming the marker."""
    out = save_diffews(tmp_path / "ckpt", parts["unet"], embedding, {})
    (out / "COMPLETE.json").unlink()
    with pytest.raises(DiffewsCheckpointError, match=r"no COMPLETE\.json; the folder was never completed"):
        load_diffews(out)


def test_stored_and_merged_banks_predict_like_a_support_pass(clean_net):
    """A bank stored from a support pass predicts what the pass itself does; merged banks as the two passes."""
    from maskforge.models.diffews.segmenter import DiffewsSegmenter, merge_banks

    seg = DiffewsSegmenter(clean_net, 64, torch.device("cpu"), relative=0.5, floor=0.4, rule="mean-floor")
    query, real, extra = latents(1, 80), (latents(2, 81), latents(2, 82)), (latents(3, 83), latents(3, 84))
    assert (seg.predict(query, (64, 64), real) == seg.predict(query, (64, 64), extra=seg.bank_state(*real))).all()
    stored = seg.bank_state(*extra)
    both = merge_banks(stored, seg.bank_state(*real))
    assert all(len(both[0][name]) == 2 for name in clean_net.fused_layers)
    direct = seg.predict(query, (64, 64), real, stored)  # the stored bank restored, then the real support pass
    assert (seg.predict(query, (64, 64), extra=both) == direct).all()
    assert clean_net.bank.key_tokens and clean_net.bank.mode == "off"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda config: [1], "holds a JSON list; expected an object"),
        (lambda config: {**config, "block_out_channels": [32]}, "does not describe a UNet diffusers can build"),
        (lambda config: {**config, "layers_per_block": "two"}, "does not describe a UNet diffusers can build"),
    ],
    ids=["not-an-object", "inconsistent-blocks", "wrong-type"],
)
def test_a_unet_config_diffusers_cannot_build_is_named(tmp_path, edit, message):
    """A config.json that is JSON but no buildable UNet is one DiffewsCheckpointError naming the file."""
    folder = tmp_path / "unet"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "diffews-toy-f0" / "unet", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(DiffewsCheckpointError, match=rf"{folder / 'config.json'}.*{message}"):
        key_report(folder)
