"""Cross-attention capture: a processor on attn2 layers that sums the class word's attention maps in fp32."""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_LAYER_RE = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\..*\.attn2\.processor$")


class CaptureError(ValueError):
    """A capture that cannot be set up or read: names the layer, factor or shape at fault."""


def cross_attention_factors(unet) -> dict[str, int]:
    """Return {processor name: latent downsampling factor} for every cross-attention (attn2) layer of a UNet.

    diffusers' UNet2DConditionModel halves the resolution after every down block but the last, so down block i
    runs at factor 2**i, the mid block at the deepest factor, and up block j at 2**(n - 1 - j).
    """
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    factors = {}
    for name in unet.attn_processors:
        match = _LAYER_RE.match(name)
        if not match:
            continue
        if match.group(2) is not None:
            factors[name] = 2 ** int(match.group(2))
        elif match.group(3) is not None:
            factors[name] = 2 ** (n_up - 1 - int(match.group(3)))
        else:
            factors[name] = 2 ** (n_down - 1)
    return factors


@dataclass
class CaptureBatch:
    """What one pipeline call captures: token weights per prompt, the latent grid and the steps to keep."""

    token_weights: torch.Tensor  # (n, T) fp32, each row sums to 1 over the class word's tokens
    latent_hw: tuple[int, int]
    steps: frozenset[int]


class AttentionStore:
    """fp32 running sums of the class word's cross-attention maps per factor; nothing is kept per step.

    UNet hooks, outside any compiled region, advance the step counter before each UNet call (one call per denoising
    step, CFG batched) and fold the layers' maps into the sums after it; the processors only read `armed` and append
    to `pending`. So a compiled UNet sees one bool per call, not a step number, and compiles at most twice.
    """

    def __init__(self, factors: Sequence[int]):
        self.factors = tuple(factors)
        self.device: torch.device | None = None
        self.batch: CaptureBatch | None = None
        self.step = -1
        self.armed = False
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    def begin(self, batch: CaptureBatch) -> None:
        """Reset the sums for a new pipeline call (token weights move to the UNet's device once, here)."""
        if self.device is not None:
            batch = CaptureBatch(batch.token_weights.to(self.device, torch.float32), batch.latent_hw, batch.steps)
        self.batch, self.step, self.armed, self.sums = batch, -1, False, {}
        self.counts = {f: 0 for f in self.factors}
        self.pending.clear()

    @property
    def active(self) -> bool:
        """Whether the current denoising step is one to accumulate."""
        return self.batch is not None and self.step in self.batch.steps

    def next_step(self) -> None:
        """Advance to the next UNet call and decide whether its maps are kept (runs eagerly, before the call)."""
        self.step += 1
        self.armed = self.active
        self.pending.clear()

    def word_maps(self, factor: int, probs: torch.Tensor, heads: int) -> torch.Tensor:
        """Reduce one layer's conditional attention probabilities (n*heads, HW, T) to (n, HW) fp32 word maps."""
        batch = self.batch
        n = batch.token_weights.shape[0]
        h, w = batch.latent_hw[0] // factor, batch.latent_hw[1] // factor
        if probs.shape[0] != n * heads or probs.shape[1] != h * w:
            raise CaptureError(
                f"factor {factor}: attention of shape {tuple(probs.shape)} does not match {n} prompts x {heads} heads "
                f"over a {h}x{w} grid (latent {batch.latent_hw})"
            )
        weights = batch.token_weights.to(probs.device)
        # (n, heads*HW, T) @ (n, T, 1): the class word's probability per pixel and head, then the mean over heads
        per_head = torch.bmm(probs.view(n, heads * h * w, -1).float(), weights.unsqueeze(-1))
        return per_head.view(n, heads, h * w).mean(1)

    def accumulate(self, factor: int, maps: torch.Tensor) -> None:
        """Add one layer's (n, HW) word maps to the sums of its factor."""
        if factor in self.sums:
            self.sums[factor] += maps
        else:
            self.sums[factor] = maps.clone()
        self.counts[factor] += 1

    def collect(self) -> None:
        """Fold the maps the layers left in `pending` into the sums (runs eagerly, after each UNet call)."""
        if self.armed:
            for factor, maps in self.pending:
                self.accumulate(factor, maps)
        self.pending.clear()

    def add(self, factor: int, probs: torch.Tensor, heads: int) -> None:
        """Add one layer's conditional attention probabilities (n*heads, HW, T) to the sums as (n, HW) word maps."""
        self.accumulate(factor, self.word_maps(factor, probs, heads))

    def maps(self) -> dict[int, torch.Tensor]:
        """Return {factor: (n, h, w) mean word map over heads, layers and captured steps} on the CPU."""
        batch = self.batch
        out = {}
        for f in self.factors:
            if not self.counts.get(f):
                raise CaptureError(
                    f"factor {f}: nothing was captured (no selected step reached a layer of this factor)"
                )
            h, w = batch.latent_hw[0] // f, batch.latent_hw[1] // f
            out[f] = (self.sums[f] / self.counts[f]).view(-1, h, w).cpu()
        return out


class CaptureProcessor:
    """Wraps a layer's own processor: its output is untouched (same op, same inputs), and for the conditional
    half of the batch it also computes softmax(QK^T) explicitly and leaves its word maps in the store's `pending`.

    Forward hooks on the layer's to_q and to_k keep the projections the wrapped processor computes anyway, so
    the capture adds only the score matrix of the conditional half; a processor that bypasses to_q/to_k (fused
    projections) gets them recomputed. Nothing here depends on the step number, so torch.compile traces it
    without graph breaks (tests/test_compile.py).
    """

    def __init__(self, inner, store: AttentionStore, factor: int, name: str):
        self.inner, self.store, self.factor, self.name = inner, store, factor, name
        self._armed = False
        self._q = self._k = None

    def keep_query(self, module, args, output) -> None:
        """Forward hook on to_q: keep its output while a capture call is running."""
        if self._armed:
            self._q = output

    def keep_key(self, module, args, output) -> None:
        """Forward hook on to_k: keep its output while a capture call is running."""
        if self._armed:
            self._k = output

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        """Run the wrapped processor, then capture this layer's word maps if the step is selected."""
        self._armed = self.store.armed
        try:
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
            if self._armed:
                self._capture(attn, hidden_states, encoder_hidden_states, attention_mask)
        finally:
            self._armed, self._q, self._k = False, None, None
        return out

    @torch.no_grad()
    def _capture(self, attn, hidden_states, encoder_hidden_states, attention_mask) -> None:
        if encoder_hidden_states is None:
            raise CaptureError(f"{self.name}: no encoder_hidden_states; not a cross-attention call")
        if attention_mask is not None:
            raise CaptureError(f"{self.name}: text attention masks are not supported by the capture")
        n = self.store.batch.token_weights.shape[0]
        # With classifier-free guidance the pipeline batches [unconditional, conditional]: keep the last n rows.
        query, key = self._q, self._k
        if query is None or key is None or query.shape[0] != hidden_states.shape[0]:
            hs, ehs = hidden_states[-n:], encoder_hidden_states[-n:]
            if hs.ndim == 4:
                hs = hs.flatten(2).transpose(1, 2)
            if attn.norm_cross:
                ehs = attn.norm_encoder_hidden_states(ehs)
            query, key = attn.to_q(hs), attn.to_k(ehs)
        query = attn.head_to_batch_dim(query[-n:])
        key = attn.head_to_batch_dim(key[-n:])
        probs = attn.get_attention_scores(query, key, None)
        self.store.pending.append((self.factor, self.store.word_maps(self.factor, probs, attn.heads)))


def _step_pre_hook(store: AttentionStore):
    def hook(module, args, kwargs):
        store.next_step()

    return hook


def _step_post_hook(store: AttentionStore):
    def hook(module, args, output):
        store.collect()

    return hook


#: Capture processors per UNet and factor set, reused across calls: a compiled UNet then sees the same objects each
#: call (no new guards), and a rebuilt set is made only when the UNet's own processors changed.
_RIGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _capture_processors(unet, factors: tuple[int, ...], original: dict, layer_factors: dict[str, int]):
    """Return (store, {name: processor}) for `factors`: the cached set if it still wraps the UNet's processors."""
    rigs = _RIGS.setdefault(unet, {})
    cached = rigs.get(factors)
    if cached is not None:
        store, processors = cached
        same = all(
            (p.inner if isinstance(p, CaptureProcessor) else p) is original.get(name) for name, p in processors.items()
        )
        if same and processors.keys() == original.keys():
            return store, processors
    store = AttentionStore(factors)
    processors = {
        name: CaptureProcessor(proc, store, layer_factors[name], name) if layer_factors.get(name) in factors else proc
        for name, proc in original.items()
    }
    rigs[factors] = (store, processors)
    return store, processors


@contextmanager
def capture_cross_attention(unet, factors: Sequence[int]) -> Iterator[AttentionStore]:
    """Install capture processors on the attn2 layers at `factors` (others keep theirs); restore them on exit.

    Hooks on the UNet module itself count steps and collect maps; they stay outside a forward compiled by
    models/speedups.py, which compiles `unet.forward`, not the module call.
    """
    layer_factors = cross_attention_factors(unet)
    available = sorted(set(layer_factors.values()))
    missing = [f for f in factors if f not in available]
    if missing:
        raise CaptureError(
            f"xattn.factors {list(factors)}: factor(s) {missing} have no cross-attention layer in this UNet; "
            f"it has factors {available}"
        )
    for name in layer_factors:
        module = unet.get_submodule(name.removesuffix(".processor"))
        if module.group_norm is not None or module.spatial_norm is not None:
            raise CaptureError(f"{name}: attention with group/spatial norm is not supported by the capture")
    original = unet.attn_processors
    store, processors = _capture_processors(unet, tuple(factors), original, layer_factors)
    store.batch, store.step, store.armed = None, -1, False
    store.device = next(unet.parameters()).device
    handles = [
        unet.register_forward_pre_hook(_step_pre_hook(store), with_kwargs=True),
        unet.register_forward_hook(_step_post_hook(store)),
    ]
    for name, proc in processors.items():
        if isinstance(proc, CaptureProcessor):
            module = unet.get_submodule(name.removesuffix(".processor"))
            handles.append(module.to_q.register_forward_hook(proc.keep_query))
            handles.append(module.to_k.register_forward_hook(proc.keep_key))
    unet.set_attn_processor(dict(processors))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
        unet.set_attn_processor(original)
        store.pending.clear()
