"""Speed settings of the diffusion stage: config and run identity, no graph breaks with the capture, capture under
torch.compile, fused self-attention projections (the stage's one compile per process: test_diffusion_stage.py)."""

import dataclasses

import numpy as np
import pytest
import torch
from tiny import sd_pipeline

from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.speedups import (
    REPEATED_BLOCKS,
    CompiledForward,
    SpeedupError,
    SpeedupPlan,
    TimedForward,
    apply_speedups,
    compile_blocks,
    fuse_self_attention,
    is_compiled,
    resolve_speedups,
)
from maskforge.models.xattn import CaptureBatch, capture_cross_attention
from maskforge.models.xattn_mask import token_weights
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.config import parse_config
from maskforge.tasks.diffusion import GenItem, generate_batch

#: Dynamo and AOTAutograd exactly as inductor receives them, without code generation: seconds on CPU, not minutes.
TRACE = SpeedupPlan(True, channels_last=True, fuse_qkv=True, backend="aot_eager")


def _pipe(tiny_models):
    return sd_pipeline(tiny_models["sd"])


def _cfg(steps=3, step_range=(0.0, 1.0)):
    return DiffusionConfig(model="x", steps=steps, image_size=64, xattn={"factors": [2, 4], "step_range": step_range})


def _items(seeds, prompt="a photo of a red disc"):
    return [GenItem("text", i, s, prompt, "", 7.5) for i, s in enumerate(seeds)]


def _unet_inputs():
    torch.manual_seed(0)
    return torch.randn(4, 4, 16, 16), torch.tensor(10), torch.randn(4, 77, 32)  # CFG batch of 2 images


def _linear_calls(explained) -> int:
    return sum(
        1
        for graph in explained.graphs
        for node in graph.graph.nodes
        if node.op == "call_function" and "linear" in str(node.target)
    )


def test_settings_resolve_per_device():
    cfg = DiffusionConfig(model="x")
    assert (cfg.compile, cfg.compile_mode, cfg.channels_last, cfg.fuse_qkv) == ("auto", "default", "auto", "auto")
    assert resolve_speedups(cfg, torch.device("cpu")) == SpeedupPlan(False, "default", False, False)
    assert resolve_speedups(cfg, torch.device("cuda")) == SpeedupPlan(True, "default", True, True)
    forced = DiffusionConfig(model="x", compile=True, compile_mode="max-autotune", fuse_qkv=False)
    assert resolve_speedups(forced, torch.device("cpu")) == SpeedupPlan(True, "max-autotune", False, False)
    assert resolve_speedups(forced, torch.device("cpu")).describe() == "compile max-autotune"
    assert TRACE.describe() == "compile default, channels-last, fused self-attention qkv"
    with pytest.raises(ConfigError, match=r"diffusion.compile"):
        parse_config({"diffusion": {"model": "x", "compile": "sometimes"}})
    with pytest.raises(ConfigError, match=r"compile_mode 'max-autotune' needs compile true or 'auto'"):
        parse_config({"diffusion": {"model": "x", "compile": False, "compile_mode": "max-autotune"}})


def test_speed_settings_are_stored_but_leave_the_run_identity_alone():
    plain = parse_config({"diffusion": {"model": "x"}})
    fast = parse_config(
        {
            "diffusion": {
                "model": "x",
                "compile": True,
                "compile_mode": "max-autotune",
                "channels_last": False,
                "fuse_qkv": True,
            }
        }
    )
    stored = fast.resolved()["diffusion"]
    assert (stored["compile"], stored["compile_mode"], stored["channels_last"], stored["fuse_qkv"]) == (
        True,
        "max-autotune",
        False,
        True,
    )
    assert plain.resolved()["diffusion"]["compile"] == "auto"
    assert fast.hash() == plain.hash()
    assert parse_config({"diffusion": {"model": "x", "steps": 20}}).hash() != plain.hash()  # real fields still count
    assert parse_config({}).hash() == parse_config({}).hash()  # no diffusion section: nothing to leave out


def test_no_graph_breaks_with_the_capture_on_or_off(tiny_models):
    """The UNet forward traces as one graph with the capture on and off; the capture adds no projection (it keeps
    the layer's own q and k) and the ControlNet forward traces whole too."""
    from diffusers import ControlNetModel

    unet = _pipe(tiny_models).unet
    fuse_self_attention(unet)
    unet.to(memory_format=torch.channels_last)
    sample, t, text = _unet_inputs()
    stock = torch._dynamo.explain(unet.forward)(sample, t, text)
    with capture_cross_attention(unet, [2, 4]) as store:
        store.begin(CaptureBatch(token_weights([[5, 6], [5, 6]], 77), (16, 16), frozenset({0})))
        store.next_step()
        assert store.armed
        captured = torch._dynamo.explain(unet.forward)(sample, t, text)
    assert (stock.graph_count, stock.graph_break_count) == (1, 0), stock.break_reasons
    assert (captured.graph_count, captured.graph_break_count) == (1, 0), captured.break_reasons
    assert _linear_calls(captured) == _linear_calls(stock) > 0
    net = ControlNetModel.from_pretrained(tiny_models["controlnet-mask"], local_files_only=True)
    fuse_self_attention(net)
    cn = torch._dynamo.explain(net.forward)(sample, t, text, controlnet_cond=torch.rand(4, 3, 64, 64))
    assert (cn.graph_count, cn.graph_break_count) == (1, 0), cn.break_reasons


def test_capture_under_compile_keeps_images_and_maps(tiny_models):
    torch._dynamo.reset()  # graphs compiled by other tests for the same code would hide this test's compiles
    pipe = _pipe(tiny_models)
    cfg, items = _cfg(), _items([11, 12])
    eager_images, eager_maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64))
    speedups = apply_speedups(pipe, TRACE)
    assert is_compiled(pipe.unet) and speedups.compiled == ["unet"] and speedups.stats.graphs == 0
    images, maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=True)
    stock, none, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=False)
    assert none is None and speedups.stats.graphs == 2  # one graph for the stock processors, one with the capture
    np.testing.assert_array_equal(images, stock)
    assert np.abs(images.astype(int) - eager_images.astype(int)).max() <= 1  # fused projections: float rounding
    for f in (2, 4):
        torch.testing.assert_close(maps[f], eager_maps[f], rtol=1e-4, atol=1e-7)
    # the step number never reaches the graph: other prompts and seeds, and a partial step range, compile nothing
    # new but the one variant whose layers skip the capture
    again, _, _ = generate_batch(pipe, _items([5, 6], "a photo of a blue square"), "blue square", cfg, (64, 64))
    assert speedups.stats.graphs == 2 and not np.array_equal(again, images)
    _, late, _ = generate_batch(pipe, items, "red disc", _cfg(step_range=(0.5, 1.0)), (64, 64))
    assert speedups.stats.graphs == 3 and speedups.stats.seconds > 0
    assert not torch.allclose(late[2], maps[2])  # fewer steps averaged: another map
    apply_speedups(pipe, TRACE, speedups)  # applying again changes nothing: one compiled forward, not a nest
    assert isinstance(pipe.unet.forward, CompiledForward) and not isinstance(pipe.unet.forward.eager, CompiledForward)
    with pytest.raises(SpeedupError, match="differs from the record's"):
        apply_speedups(pipe, dataclasses.replace(TRACE, mode="max-autotune"), speedups)


def test_compile_scope_blocks_is_checked_and_kept_out_of_the_run_identity():
    blocks = DiffusionConfig(model="x", compile=True, compile_scope="blocks")
    assert resolve_speedups(blocks, torch.device("cpu")) == SpeedupPlan(True, "default", False, False, scope="blocks")
    assert resolve_speedups(blocks, torch.device("cpu")).describe() == "compile default (transformer blocks)"
    with pytest.raises(ConfigError, match=r"compile_scope 'blocks' needs compile_mode default or"):
        parse_config({"diffusion": {"model": "x", "compile_scope": "blocks", "compile_mode": "reduce-overhead"}})
    with pytest.raises(ConfigError, match=r"diffusion.compile_scope"):
        parse_config({"diffusion": {"model": "x", "compile_scope": "layers"}})
    plain = parse_config({"diffusion": {"model": "x"}})
    regional = parse_config({"diffusion": {"model": "x", "compile_scope": "blocks"}})
    assert regional.resolved()["diffusion"]["compile_scope"] == "blocks" and regional.hash() == plain.hash()


def test_capture_under_block_compile_keeps_images_and_maps(tiny_models):
    """compile_scope blocks: every transformer block of the UNet and the ControlNet compiled in place, the forward
    eager around them; blocks of one shape share graphs, so a call compiles a few graphs, not one per block; images
    and maps as eager, the capture on and off."""
    from diffusers import ControlNetModel
    from diffusers.models.attention import BasicTransformerBlock

    torch._dynamo.reset()
    pipe = _pipe(tiny_models)
    cfg, items = _cfg(), _items([11, 12])
    eager_images, eager_maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64))
    plan = dataclasses.replace(TRACE, scope="blocks")
    speedups = apply_speedups(pipe, plan)
    blocks = [m for m in pipe.unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert len(blocks) == 7 and all(b._compiled_call_impl is not None for b in blocks)
    assert is_compiled(pipe.unet) and speedups.compiled == ["unet"] and speedups.stats.graphs == 0
    images, maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=True)
    stock, _, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=False)
    compiled = speedups.stats.graphs
    assert 0 < compiled < 2 * len(blocks) and speedups.stats.seconds > 0  # shared graphs, not two per block
    np.testing.assert_array_equal(images, stock)
    assert np.abs(images.astype(int) - eager_images.astype(int)).max() <= 1  # fused projections: float rounding
    for f in (2, 4):
        torch.testing.assert_close(maps[f], eager_maps[f], rtol=1e-4, atol=1e-7)
    generate_batch(pipe, _items([5, 6], "a photo of a blue square"), "blue square", cfg, (64, 64))
    assert speedups.stats.graphs == compiled  # other prompts and seeds: nothing new to compile
    # a ControlNet pipeline sharing the UNet: only the ControlNet's blocks are added
    from diffusers import StableDiffusionControlNetPipeline

    net = ControlNetModel.from_pretrained(tiny_models["controlnet-mask"], local_files_only=True)
    sample, t, text = _unet_inputs()
    hint = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager_mid = net(sample, t, text, controlnet_cond=hint).mid_block_res_sample
    cn = StableDiffusionControlNetPipeline(**pipe.components, controlnet=net)
    apply_speedups(cn, plan, speedups)
    assert speedups.compiled == ["unet", "controlnet"] and isinstance(net.forward, TimedForward)
    assert all(m._compiled_call_impl is not None for m in net.modules() if isinstance(m, BasicTransformerBlock))
    with torch.no_grad():
        mid = net(sample, t, text, controlnet_cond=hint.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(mid.mid_block_res_sample, eager_mid, rtol=1e-4, atol=1e-5)
    assert speedups.stats.graphs > compiled  # the ControlNet's blocks compiled on its first call
    with pytest.raises(SpeedupError, match="mode 'reduce-overhead' captures CUDA graphs"):
        compile_blocks(_pipe(tiny_models).unet, dataclasses.replace(plan, mode="reduce-overhead"), REPEATED_BLOCKS)
    with pytest.raises(SpeedupError, match="compile_scope: expected 'model' or 'blocks', got 'layers'"):
        SpeedupPlan(True, scope="layers")
    with pytest.raises(SpeedupError, match="has no Nothing to compile"):
        compile_blocks(_pipe(tiny_models).unet, plan, ("Nothing",))


def test_fused_self_attention_leaves_the_captured_maps(tiny_models):
    pipe = _pipe(tiny_models)
    cfg, items = _cfg(), _items([3, 4])
    images, maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64))
    assert fuse_self_attention(pipe.unet) == 7  # one attn1 per transformer block of the tiny UNet
    assert fuse_self_attention(pipe.unet) == 0  # already fused
    kinds = {name: type(p).__name__ for name, p in pipe.unet.attn_processors.items()}
    assert {k for n, k in kinds.items() if ".attn1." in n} == {"FusedAttnProcessor2_0"}
    assert {k for n, k in kinds.items() if ".attn2." in n} == {"AttnProcessor2_0"}  # cross-attention untouched
    fused_images, fused_maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64))
    assert np.abs(fused_images.astype(int) - images.astype(int)).max() <= 1
    for f in maps:
        torch.testing.assert_close(fused_maps[f], maps[f], rtol=1e-4, atol=1e-7)
    # diffusers' own fusion also fuses cross-attention k and v: the capture then recomputes k from to_k
    other = _pipe(tiny_models)
    other.unet.fuse_qkv_projections()
    _, all_fused, _ = generate_batch(other, items, "red disc", cfg, (64, 64))
    for f in maps:
        torch.testing.assert_close(all_fused[f], maps[f], rtol=1e-4, atol=1e-7)
    # a self-attention layer with a processor of its own is an error, not silently replaced
    from diffusers.models.attention_processor import AttnProcessor

    plain = _pipe(tiny_models).unet
    plain.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn1").set_processor(AttnProcessor())
    with pytest.raises(
        SpeedupError, match=r"down_blocks.1.attentions.0.transformer_blocks.0.attn1 runs AttnProcessor,"
    ):
        fuse_self_attention(plain)


@pytest.mark.gpu
@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_inductor_capture_on_gpu_keeps_images(tiny_models, scope):
    """The real compiler on CUDA, fp16, whole UNet or its transformer blocks: capture on and off give identical
    images; fp32 maps stay finite; new seeds compile nothing new."""
    torch._dynamo.reset()
    pipe = sd_pipeline(tiny_models["sd"], torch.float16, "cuda")
    speedups = apply_speedups(pipe, SpeedupPlan(True, channels_last=True, fuse_qkv=True, scope=scope))
    cfg, items = _cfg(), _items([1, 2])
    images, maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=True)
    stock, _, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=False)
    np.testing.assert_array_equal(images, stock)
    assert all(m.dtype == torch.float32 and torch.isfinite(m).all() for m in maps.values())
    compiled = speedups.stats.graphs
    generate_batch(pipe, _items([3, 4]), "red disc", cfg, (64, 64))
    assert speedups.stats.graphs == compiled
    if scope == "model":
        assert compiled == 2  # one graph with the capture, one without
    else:
        assert 0 < compiled < 14  # the 7 blocks share graphs
