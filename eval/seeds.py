"""Deterministic seeds for work items: every sample's randomness derives from named parts, never a shared stream."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: object) -> int:
    """Return a 63-bit seed from an ordered tuple of ints/strings (stable across processes and platforms)."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def rng_for(*parts: object) -> np.random.Generator:
    """Return a numpy Generator seeded from derive_seed(*parts)."""
    return np.random.default_rng(derive_seed(*parts))


def item_seed(run_seed: int, class_id: int, index: int, stage: str) -> int:
    """Seed of one work item: (run seed, class, index) plus the stage name, so stages draw independent numbers."""
    return derive_seed("item", run_seed, class_id, index, stage)
