"""Cross-attention grounding loss for training: the class word's attention map, with gradients, against its mask.

A small text-to-image model trained on the noise loss alone need not route the object through the class word's
tokens (the toy model sends it through the end-of-text and padding tokens, leaving the word's map on the ground), and
then cross-attention coarse masks miss the object. This loss, like Break-A-Scene's attention loss (Avrahami et al.,
2023), pulls each word map (max-normalised, as `models/xattn_mask.py:soft_map` reads it) towards the object mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from maskforge.models.xattn import CaptureError, cross_attention_factors


class GroundingState:
    """Per batch: the class word's token weights (set before the UNet call) and the word maps its layers produced."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None  # (b, T): 1/len over each caption's class-word tokens, 0 if dropped
        self.maps: dict[int, list[torch.Tensor]] = {}

    def loss(self, masks: torch.Tensor) -> torch.Tensor:
        """Return the per-image grounding loss (b,) against masks (b, h, w) in [0, 1] on the latent grid; clear maps.

        Each layer's word map is divided by its maximum and compared (MSE) with the mask area-averaged to the
        layer's grid; layers are averaged.
        """
        if not self.maps:
            raise CaptureError("grounding: no word map was produced (no UNet call since the last loss, or no layer)")
        terms = []
        for factor, maps in sorted(self.maps.items()):
            grid = (masks.shape[-2] // factor, masks.shape[-1] // factor)
            target = F.adaptive_avg_pool2d(masks[:, None].float(), grid).flatten(1)
            for word in maps:
                word = word / word.amax(dim=1, keepdim=True).clamp_min(1e-8)
                terms.append((word - target).pow(2).mean(dim=1))
        self.maps = {}
        return torch.stack(terms).mean(0)


class GroundingProcessor:
    """attn2 processor for training: plain attention whose probabilities also give the class word's map."""

    def __init__(self, state: GroundingState, factor: int, name: str):
        self.state, self.factor, self.name = state, factor, name

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        """Attention as diffusers' classic processor computes it; keeps the word map (b, h*w) when weights are set."""
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise CaptureError(f"{self.name}: grounding needs a cross-attention call on (b, tokens, channels) states")
        if attn.group_norm is not None or attn.spatial_norm is not None:
            raise CaptureError(f"{self.name}: attention with group/spatial norm is not supported by grounding")
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (b * heads, h*w, T)
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, value))))
        if attn.residual_connection:
            out = out + hidden_states
        out = out / attn.rescale_output_factor
        weights = self.state.weights
        if weights is not None:
            per_head = probs.view(hidden_states.shape[0], attn.heads, *probs.shape[1:])
            word = torch.einsum("bhqt,bt->bq", per_head, weights.to(probs.dtype)) / attn.heads
            self.state.maps.setdefault(self.factor, []).append(word)
        return out


@contextmanager
def grounding(unet, factors: Sequence[int]) -> Iterator[GroundingState]:
    """Install grounding processors on the attn2 layers at `factors` (others keep theirs); restore them on exit."""
    layer_factors = cross_attention_factors(unet)
    missing = [f for f in factors if f not in set(layer_factors.values())]
    if missing:
        raise CaptureError(
            f"grounding factors {list(factors)}: {missing} have no cross-attention layer in this UNet; "
            f"it has factors {sorted(set(layer_factors.values()))}"
        )
    original = unet.attn_processors
    state = GroundingState()
    unet.set_attn_processor(
        {
            name: GroundingProcessor(state, layer_factors[name], name) if layer_factors.get(name) in factors else proc
            for name, proc in original.items()
        }
    )
    try:
        yield state
    finally:
        unet.set_attn_processor(original)
