"""KV-fusion self-attention: a support pass stores each self-attention layer's K/V, the query pass attends over both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
import torch.utils.checkpoint


class KVFusionError(ValueError):
    """A support bank that does not fit the query pass (group count, missing layer): names both sides."""


class KVBank:
    """Per-layer support keys and values shared by every KV-fusion processor of one UNet.

    Modes: "off" (plain self-attention), "write" (a support pass: store K/V, attend normally) and "read" (the query
    pass: attend over [query K/V, support K/V]). A support pass over G·n support latents (episode-major: the n
    supports of episode 0 first) is stored as G groups of n·tokens keys, so each of G queries attends over its own
    n supports; one group is shared by any number of queries. Nothing is detached: in training the query loss
    reaches the support pass through the bank.
    """

    def __init__(self) -> None:
        """Start empty and off."""
        self.mode = "off"
        self.groups = 1
        self.keys: dict[str, list[torch.Tensor]] = {}
        self.values: dict[str, list[torch.Tensor]] = {}
        #: key tokens each layer attended over in the last read pass ({layer name: tokens}); for tests and benches
        self.key_tokens: dict[str, int] = {}

    def clear(self) -> None:
        """Drop every stored K/V and switch off (called after each episode)."""
        self.mode = "off"
        self.keys.clear()
        self.values.clear()

    def write(self, name: str, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one layer's support K/V of shape (G·n, tokens, C) as (G, n·tokens, C); appends to earlier writes."""
        total, tokens, channels = key.shape
        if total % self.groups:
            raise KVFusionError(
                f"KV bank: a support pass of {total} latents cannot be split into {self.groups} episode groups"
            )
        shape = (self.groups, (total // self.groups) * tokens, channels)
        self.keys.setdefault(name, []).append(key.reshape(shape))
        self.values.setdefault(name, []).append(value.reshape(shape))

    def read(self, name: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one layer's support (K, V) for a query batch: (batch, n·tokens, C), a single group broadcast."""
        if name not in self.keys:
            raise KVFusionError(f"KV bank: layer {name} has no support keys; run a support pass before the query pass")
        key = torch.cat(self.keys[name], dim=1)
        value = torch.cat(self.values[name], dim=1)
        if key.shape[0] == 1 and batch > 1:
            key, value = key.expand(batch, -1, -1), value.expand(batch, -1, -1)
        elif key.shape[0] != batch:
            raise KVFusionError(
                f"KV bank: layer {name} holds supports of {key.shape[0]} episodes, the query pass has {batch} queries"
            )
        return key, value

    def snapshot(self) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
        """Return the stored K/V (to restore later, e.g. fixed synthetic supports reused by every episode)."""
        return {k: list(v) for k, v in self.keys.items()}, {k: list(v) for k, v in self.values.items()}

    def restore(self, state: tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]) -> None:
        """Replace the stored K/V by a snapshot; later writes append to it."""
        self.keys = {k: list(v) for k, v in state[0].items()}
        self.values = {k: list(v) for k, v in state[1].items()}

    def capture(self) -> tuple:
        """Return everything a processor call reads (mode, groups, stored K/V), to replay that call later."""
        return self.mode, self.groups, self.snapshot()

    @contextmanager
    def replaying(self, captured: tuple) -> Iterator[None]:
        """Put the bank back as `captured` for a recomputation, then as it was: what the replayed calls write
        (a support pass's K/V, stored again) is dropped with the replay."""
        now = self.capture()
        self.mode, self.groups, stored = captured
        self.restore(stored)
        try:
            yield
        finally:
            self.mode, self.groups, stored = now
            self.restore(stored)


class KVFusionProcessor:
    """SDPA attention processor for one self-attention (attn1) layer that reads and writes a KVBank.

    Follows diffusers' AttnProcessor2_0 for 3-d token input (what BasicTransformerBlock passes); in "read" mode the
    keys and values are the concatenation [query K/V, support K/V] along the token axis, queries stay the query's.
    """

    def __init__(self, bank: KVBank, name: str) -> None:
        """Serve layer `name` (its attn_processors key) from `bank`."""
        self.bank = bank
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        """Self-attention over the layer's own tokens, plus the bank's support tokens in a query pass."""
        if encoder_hidden_states is not None or hidden_states.ndim != 3:
            raise KVFusionError(f"{self.name}: KV fusion serves self-attention on token sequences only")
        if attention_mask is not None:
            raise KVFusionError(f"{self.name}: KV fusion does not take an attention mask")
        residual = hidden_states
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        if self.bank.mode == "write":
            self.bank.write(self.name, key, value)
        elif self.bank.mode == "read":
            support_key, support_value = self.bank.read(self.name, batch)
            key = torch.cat([key, support_key.to(key.dtype)], dim=1)
            value = torch.cat([value, support_value.to(value.dtype)], dim=1)
            self.bank.key_tokens[self.name] = key.shape[1]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_kv_fusion(unet, bank: KVBank) -> list[str]:
    """Give every self-attention (attn1) layer of a diffusers UNet a KVFusionProcessor on `bank`; cross-attention
    (attn2) keeps its processor. Returns the names of the fused layers."""
    processors = {}
    fused = []
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            processors[name] = KVFusionProcessor(bank, name)
            fused.append(name)
        else:
            processors[name] = proc
    if not fused:
        raise KVFusionError("install_kv_fusion: the UNet has no self-attention (attn1) layer to fuse")
    unet.set_attn_processor(processors)
    return fused


def bank_checkpointing(bank: KVBank) -> Callable:
    """Return a diffusers `gradient_checkpointing_func` under which the KV bank survives recomputation.

    Each checkpointed block is recomputed in backward, after the bank has moved on (a support pass's block runs again
    once the query pass has read, and the bank has been cleared). So the bank's state at the block's forward call is
    captured and put back for its recomputation (torch's non-reentrant checkpoint with a `context_fn`): the
    recomputed support block stores its K/V into a throwaway copy, the recomputed query block attends over the same
    support K/V, and the gradients are those of the plain pass.
    """

    def checkpointed(module, *args):
        """Run one block under torch's non-reentrant checkpoint, its recomputation seeing the bank as now."""
        captured = bank.capture()
        return torch.utils.checkpoint.checkpoint(
            module.__call__,
            *args,
            use_reentrant=False,
            context_fn=lambda: (nullcontext(), bank.replaying(captured)),
        )

    return checkpointed
