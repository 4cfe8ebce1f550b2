"""Support masking and 4D hypercorrelation: cosine similarity of every query/support position pair, clamped at 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Added to feature norms before division (as in HSNet) so all-zero masked support features give zero similarity.
EPS = 1e-5


def mask_features(features: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """Multiply each support feature map (B, C, h, w) by the mask (B, H, W) resized bilinearly to (h, w)."""
    out = []
    for feat in features:
        resized = F.interpolate(mask[:, None].float(), feat.shape[-2:], mode="bilinear", align_corners=True)
        out.append(feat * resized)
    return out


def correlation(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Cosine correlation of query (B, C, Hq, Wq) and support (B, C, Hs, Ws) features: (B, Hq, Wq, Hs, Ws), >= 0."""
    b, c, hq, wq = query.shape
    hs, ws = support.shape[-2:]
    q = query.flatten(2)
    s = support.flatten(2)
    q = q / (q.norm(dim=1, p=2, keepdim=True) + EPS)
    s = s / (s.norm(dim=1, p=2, keepdim=True) + EPS)
    corr = torch.bmm(q.transpose(1, 2), s).view(b, hq, wq, hs, ws)
    return corr.clamp(min=0)


def hypercorrelation(
    query_levels: list[list[torch.Tensor]], support_levels: list[list[torch.Tensor]]
) -> list[torch.Tensor]:
    """Stack per-layer correlations as channels per level: [(B, n_layers, Hq, Wq, Hs, Ws)], deepest level first."""
    return [
        torch.stack([correlation(q, s) for q, s in zip(qs, ss)], dim=1) for qs, ss in zip(query_levels, support_levels)
    ]
