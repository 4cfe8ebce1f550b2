"""Cross-attention capture on the tiny UNet, token positions, and soft map -> coarse mask on hand-built patterns."""

import numpy as np
import pytest
import torch
from tiny import sd_pipeline

from maskforge.models.diffusion_config import DiffusionConfig
from maskforge.models.speedups import fuse_self_attention
from maskforge.models.xattn import (
    AttentionStore,
    CaptureBatch,
    CaptureError,
    CaptureProcessor,
    capture_cross_attention,
    cross_attention_factors,
)
from maskforge.models.xattn_mask import coarse_mask, soft_map, token_weights, word_token_indices
from maskforge.tasks.diffusion import GenItem, generate_batch, selected_steps


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return sd_pipeline(tiny_models["sd"])


def _cfg(tiny_models, **kw):
    return DiffusionConfig(model=tiny_models["sd"], steps=3, image_size=64, xattn={"factors": [2, 4], **kw})


def _items(prompts, seeds):
    return [GenItem("text", i, s, p, "", 7.5) for i, (p, s) in enumerate(zip(prompts, seeds))]


def test_layer_factors_follow_the_unet(pipe):
    factors = cross_attention_factors(pipe.unet)
    # tiny UNet: cross-attention in down blocks 1 and 2, the mid block, and up blocks 0 and 1
    assert factors == {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor": 2,
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor": 4,
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor": 4,
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor": 4,
        "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor": 4,
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor": 2,
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor": 2,
    }


def test_capture_does_not_change_the_image(pipe, tiny_models):
    cfg = _cfg(tiny_models)
    items = _items(["a photo of a red disc", "a photo of a red disc"], [11, 12])
    with_capture, maps, indices = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=True)
    without, none_maps, _ = generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=False)
    assert none_maps is None
    np.testing.assert_array_equal(with_capture, without)
    assert with_capture.shape == (2, 64, 64, 3) and with_capture.dtype == np.uint8
    assert not np.array_equal(with_capture[0], with_capture[1])  # different seeds, different images
    # latent grid 16x16 (4x VAE): factor 2 -> 8x8 maps, factor 4 -> 4x4 maps, one per prompt
    assert {f: tuple(m.shape) for f, m in maps.items()} == {2: (2, 8, 8), 4: (2, 4, 4)}
    assert indices == [[5, 6], [5, 6]]
    # every map is a mean of attention probabilities: positive and below 1
    for m in maps.values():
        assert float(m.min()) > 0 and float(m.max()) < 1
    # the processors are restored after the capture
    assert all(type(p).__name__ != "CaptureProcessor" for p in pipe.unet.attn_processors.values())


def test_step_range_selects_steps(pipe, tiny_models):
    assert selected_steps(10, (0.0, 1.0)) == frozenset(range(10))
    assert selected_steps(10, (0.5, 1.0)) == frozenset(range(5, 10))
    assert selected_steps(4, (0.0, 0.25)) == frozenset({0})
    with pytest.raises(ValueError, match="selects none of the 2 steps"):
        selected_steps(2, (0.6, 0.9))
    _cfg(tiny_models, step_range=(0.5, 1.0))  # a valid step range
    items = _items(["a photo of a red disc"], [1])
    with capture_cross_attention(pipe.unet, [2, 4]) as store:
        store.begin(CaptureBatch(token_weights([[5, 6]], 77), (16, 16), selected_steps(4, (0.5, 1.0))))
        pipe(
            prompt=[items[0].prompt],
            num_inference_steps=4,
            height=64,
            width=64,
            output_type="np",
            generator=[torch.Generator().manual_seed(1)],
        )
        # 2 of 4 steps kept: 3 layers at factor 2 and 4 layers at factor 4 each time
        assert store.step == 3 and store.counts == {2: 6, 4: 8}


def test_missing_factor_is_an_error(pipe):
    with pytest.raises(CaptureError, match=r"factor\(s\) \[1\] have no cross-attention layer.*factors \[2, 4\]"):
        with capture_cross_attention(pipe.unet, [1, 2]):
            pass


def test_word_token_indices(pipe):
    tok = pipe.tokenizer
    assert word_token_indices(tok, "a photo of a red disc", "red disc") == [5, 6]
    ids = tok("a photo of a dining table").input_ids
    idx = word_token_indices(tok, "a photo of a dining table", "dining table")
    assert [ids[i] for i in idx] == tok("dining table", add_special_tokens=False).input_ids
    # a word split into several BPE pieces: every piece is found
    pieces = tok("xylophonist", add_special_tokens=False).input_ids
    assert len(pieces) > 1
    assert word_token_indices(tok, "a photo of a xylophonist", "xylophonist") == list(range(5, 5 + len(pieces)))
    with pytest.raises(ValueError, match="'cat' does not occur in prompt 'a photo of a dog'"):
        word_token_indices(tok, "a photo of a dog", "cat")
    with pytest.raises(ValueError, match="beyond the text encoder's 77-token window"):
        word_token_indices(tok, "word " * 80 + "cat", "cat")


def test_token_weights_average_multi_token_words():
    w = token_weights([[5, 6], [7]], 77)
    assert w.shape == (2, 77) and w.dtype == torch.float32
    assert w[0, 5] == w[0, 6] == 0.5 and w[1, 7] == 1.0 and float(w.sum()) == 2.0


def test_hand_built_attention_gives_the_expected_mask():
    """A store fed attention that puts the word's mass on a square yields exactly that square as the mask."""
    store = AttentionStore([2, 4])
    n, heads, latent = 1, 2, (16, 16)
    store.begin(CaptureBatch(token_weights([[3]], 8), latent, frozenset({0})))
    store.step = 0
    for factor in (2, 4):
        h = w = 16 // factor
        probs = torch.full((n * heads, h * w, 8), 1.0 / 8)
        grid = torch.zeros(h, w, dtype=torch.bool)
        grid[h // 4 : 3 * h // 4, h // 4 : 3 * h // 4] = True  # the centre quarter of the grid
        inside = grid.flatten()
        probs[:, inside, :] = 0.02
        probs[:, inside, 3] = 1.0 - 0.02 * 7  # the word's token takes most of the mass inside the square
        store.add(factor, probs, heads)
    maps = store.maps()
    assert maps[2].shape == (1, 8, 8) and maps[4].shape == (1, 4, 4)
    soft = soft_map({f: m[0] for f, m in maps.items()}, (64, 64))
    assert soft.shape == (64, 64) and soft.dtype == np.float32 and soft.max() == pytest.approx(1.0)
    mask, cut = coarse_mask(soft, 0.4)
    expected = np.zeros((64, 64), dtype=bool)
    expected[16:48, 16:48] = True
    assert cut == 0.4
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou > 0.85, iou  # bicubic upsampling blurs the 4x4 map's edge by a few pixels
    otsu, otsu_cut = coarse_mask(soft, "otsu")
    assert 0 < otsu_cut < 1 and (otsu & expected).sum() / (otsu | expected).sum() > 0.85


def test_store_rejects_mismatched_attention():
    store = AttentionStore([2])
    store.begin(CaptureBatch(token_weights([[1]], 4), (16, 16), frozenset({0})))
    with pytest.raises(
        CaptureError,
        match=r"factor 2: attention of shape \(2, 60, 4\) does not match 1 prompts x 2 heads over a 8x8 grid",
    ):
        store.add(2, torch.rand(2, 60, 4), 2)
    with pytest.raises(CaptureError, match="factor 2: nothing was captured"):
        store.maps()


def test_soft_map_errors():
    with pytest.raises(ValueError, match="zero everywhere"):
        soft_map({2: np.zeros((4, 4))}, (16, 16))
    with pytest.raises(ValueError, match="no cross-attention maps"):
        soft_map({}, (16, 16))
    with pytest.raises(ValueError, match="constant soft map"):
        coarse_mask(np.ones((8, 8), dtype=np.float32), "otsu")


def test_capture_processor_keeps_outputs_of_the_wrapped_processor():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    store = AttentionStore([1])
    store.begin(CaptureBatch(token_weights([[1], [2]], 5), (4, 4), frozenset({0})))
    store.next_step()  # what the UNet's pre-hook does: step 0, which is selected
    assert store.step == 0 and store.armed
    hidden, text = torch.randn(4, 16, 16), torch.randn(4, 5, 8)  # CFG batch: 2 unconditional + 2 conditional
    wrapped = CaptureProcessor(AttnProcessor2_0(), store, 1, "layer")
    attn.set_processor(wrapped)
    out = attn(hidden, encoder_hidden_states=text)
    assert len(store.pending) == 1 and not store.sums  # the layer leaves its maps; the UNet's post-hook folds them
    store.collect()
    attn.set_processor(AttnProcessor2_0())
    assert torch.equal(out, attn(hidden, encoder_hidden_states=text))
    # the conditional rows (2, 3) were captured: compare with a direct softmax
    q = attn.to_q(hidden[2:]).view(2, 16, 2, 8).transpose(1, 2)
    k = attn.to_k(text[2:]).view(2, 5, 2, 8).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1).mean(1)  # (2, 16, 5), mean over heads
    expected = torch.stack([probs[0, :, 1], probs[1, :, 2]])
    torch.testing.assert_close(store.maps()[1].view(2, 16), expected, rtol=1e-5, atol=1e-6)


def test_capture_reuses_the_layer_projections(pipe, tiny_models):
    """The capture keeps to_q/to_k outputs through hooks instead of recomputing them: same call counts."""
    calls = {"n": 0}

    def count(module, args, output):
        calls["n"] += 1

    layer = pipe.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn2")
    handle = layer.to_q.register_forward_hook(count)
    try:
        cfg = _cfg(tiny_models)
        items = _items(["a photo of a red disc"], [5])
        generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=False)
        stock = calls["n"]
        generate_batch(pipe, items, "red disc", cfg, (64, 64), capture=True)
        assert stock == 3 and calls["n"] - stock == stock  # one to_q call per step, with or without capture
    finally:
        handle.remove()


def test_capture_processors_are_reused_until_the_unet_changes(tiny_models):
    """The same processor objects every call (a compiled UNet sees nothing new), rebuilt when the UNet's own change."""

    unet = sd_pipeline(tiny_models["sd"]).unet
    stock = unet.attn_processors
    with capture_cross_attention(unet, [2, 4]) as first:
        installed = unet.attn_processors
    with capture_cross_attention(unet, [2, 4]) as second:
        assert second is first and all(unet.attn_processors[n] is p for n, p in installed.items())
        assert second.batch is None and second.step == -1 and not second.armed  # reset on entry
    assert all(unet.attn_processors[n] is p for n, p in stock.items())  # restored on exit
    with capture_cross_attention(unet, [2]) as other:
        assert other is not first and other.factors == (2,)
    fuse_self_attention(unet)  # new attn1 processors: the capture wraps the UNet as it is now
    with capture_cross_attention(unet, [2, 4]) as rebuilt:
        assert rebuilt is not first
        kinds = {type(p).__name__ for n, p in unet.attn_processors.items() if ".attn1." in n}
        assert kinds == {"FusedAttnProcessor2_0"}


@pytest.mark.gpu
def test_half_precision_capture_on_gpu(tiny_models):
    """On a GPU in float16: capture leaves pixels unchanged and its fp32 sums stay finite."""
    sd = sd_pipeline(tiny_models["sd"], torch.float16, "cuda")
    cfg = _cfg(tiny_models)
    items = _items(["a photo of a red disc", "a photo of a red disc"], [1, 2])
    with_capture, maps, _ = generate_batch(sd, items, "red disc", cfg, (64, 64), capture=True)
    without, _, _ = generate_batch(sd, items, "red disc", cfg, (64, 64), capture=False)
    np.testing.assert_array_equal(with_capture, without)
    assert all(m.dtype == torch.float32 and torch.isfinite(m).all() for m in maps.values())
