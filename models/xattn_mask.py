"""Cross-attention coarse masks: the class word's token positions, and soft map -> coarse mask (AlignDiff §3.3)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def word_token_indices(tokenizer, prompt: str, word: str) -> list[int]:
    """Return the positions of `word`'s tokens in the encoded prompt (start token at 0, so offsets are built in).

    CLIP's BPE works word by word, so a word tokenizes the same alone as inside a prompt; every occurrence of the
    word's token sequence counts. A word absent from the prompt, or cut off by the 77-token limit, is an error.
    """
    ids = tokenizer(prompt, truncation=False).input_ids
    word_ids = tokenizer(word, add_special_tokens=False).input_ids
    if not word_ids:
        raise ValueError(f"class word {word!r} encodes to no token")
    n = len(word_ids)
    found = [i + j for i in range(len(ids) - n + 1) if ids[i : i + n] == word_ids for j in range(n)]
    if not found:
        raise ValueError(f"class word {word!r} does not occur in prompt {prompt!r}; its cross-attention map needs it")
    limit = tokenizer.model_max_length
    if max(found) >= limit - 1:
        raise ValueError(
            f"class word {word!r} sits at token {max(found)} of prompt {prompt!r}, beyond the text encoder's "
            f"{limit}-token window"
        )
    return found


def token_weights(indices_per_prompt: list[list[int]], length: int) -> torch.Tensor:
    """Return (n, length) fp32 weights: 1/len over each prompt's word tokens (multi-token words are averaged)."""
    weights = torch.zeros(len(indices_per_prompt), length, dtype=torch.float32)
    for row, indices in enumerate(indices_per_prompt):
        weights[row, indices] = 1.0 / len(indices)
    return weights


def soft_map(maps: dict[int, np.ndarray | torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    """Combine one image's per-factor maps (h_f, w_f) into a [0, 1] soft map of `size` (H, W).

    Each factor's map is bicubically upsampled, clamped at 0 and divided by its maximum, so every resolution
    weighs the same (AlignDiff's recipe); the mean over factors is divided by its maximum.
    """
    if not maps:
        raise ValueError("no cross-attention maps to combine")
    ups = []
    for factor, m in sorted(maps.items()):
        m = torch.as_tensor(m, dtype=torch.float32)
        if m.ndim != 2:
            raise ValueError(f"factor {factor}: map must be 2-D (h, w), got shape {tuple(m.shape)}")
        up = F.interpolate(m[None, None], size=size, mode="bicubic", align_corners=False)[0, 0].clamp_(min=0)
        peak = float(up.max())
        if not peak > 0:
            raise ValueError(f"factor {factor}: the attention map is zero everywhere; no mask can be cut from it")
        ups.append(up / peak)
    mean = torch.stack(ups).mean(0)
    return (mean / mean.max()).numpy()


def otsu_threshold(values: np.ndarray) -> float:
    """Return Otsu's threshold of a soft map (scikit-image); a constant map has none and is an error."""
    from skimage.filters import threshold_otsu

    if float(values.max()) == float(values.min()):
        raise ValueError("Otsu's threshold is undefined on a constant soft map")
    return float(threshold_otsu(values))


def coarse_mask(soft: np.ndarray, threshold: float | str) -> tuple[np.ndarray, float]:
    """Cut a [0, 1] soft map: pixels > threshold (AlignDiff) or > Otsu's cut for "otsu"; return (mask, cut)."""
    cut = otsu_threshold(soft) if threshold == "otsu" else float(threshold)
    return soft > cut, cut
