"""The training-time grounding processor attends as the stock one does, keeps the word maps with gradients, and
its loss is zero exactly when the max-normalised word map equals the mask."""

import pytest
import torch

from maskforge.models.grounding import GroundingProcessor, GroundingState, grounding
from maskforge.models.xattn import CaptureError, cross_attention_factors
from maskforge.models.xattn_mask import token_weights


def test_processor_matches_stock_attention_and_keeps_word_maps():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    hidden, text = torch.randn(2, 16, 16), torch.randn(2, 5, 8)
    stock = attn(hidden, encoder_hidden_states=text)
    state = GroundingState()
    state.weights = token_weights([[1], [2, 3]], 5)
    attn.set_processor(GroundingProcessor(state, 4, "layer"))
    out = attn(hidden, encoder_hidden_states=text)
    attn.set_processor(AttnProcessor())
    torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-6)
    q = attn.to_q(hidden).view(2, 16, 2, 8).transpose(1, 2)
    k = attn.to_k(text).view(2, 5, 2, 8).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1).mean(1)  # (2, 16, 5), mean over heads
    expected = torch.stack([probs[0, :, 1], (probs[1, :, 2] + probs[1, :, 3]) / 2])
    (word,) = state.maps[4]
    torch.testing.assert_close(word.detach(), expected, rtol=1e-5, atol=1e-6)
    assert word.requires_grad  # the loss trains the projections


def test_loss_is_zero_on_the_mask_and_grows_when_inverted():
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:6, 2:6] = 1.0
    state = GroundingState()
    state.maps = {2: [0.3 * mask[:, ::2, ::2].flatten(1)]}  # any positive scale: the map is max-normalised
    assert torch.allclose(state.loss(mask), torch.zeros(2))
    assert state.maps == {}  # consumed
    state.maps = {2: [1.0 - mask[:, ::2, ::2].flatten(1)]}
    assert torch.all(state.loss(mask) > 0.9)  # the word on the ground, not the object
    with pytest.raises(CaptureError, match="no word map"):
        state.loss(mask)


def test_context_installs_on_chosen_factors_and_restores(tiny_models):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(f"{tiny_models['sd']}/unet", local_files_only=True)
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    factors = cross_attention_factors(unet)
    with grounding(unet, [2]) as state:
        grounded = {n for n, p in unet.attn_processors.items() if isinstance(p, GroundingProcessor)}
        assert grounded == {n for n, f in factors.items() if f == 2}
        state.weights = token_weights([[5]], 77)
        unet(torch.randn(1, 4, 16, 16), 10, torch.randn(1, 77, unet.config.cross_attention_dim))
        assert set(state.maps) == {2} and all(m.shape == (1, 64) for m in state.maps[2])  # 8 x 8 grid at factor 2
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    with pytest.raises(CaptureError, match=r"\[3\] have no cross-attention layer"):
        with grounding(unet, [2, 3]):
            pass
