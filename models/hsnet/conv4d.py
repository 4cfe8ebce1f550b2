"""Center-pivot 4D convolution: a 2D conv over the query dims plus a 2D conv over the (strided) support dims."""

from __future__ import annotations

import torch
from torch import nn


class CenterPivotConv4d(nn.Module):
    """4D conv on (B, C, Hq, Wq, Hs, Ws) as the sum of two 2D convs; only the support dims are strided.

    `conv1` slides over the query dims at each (sub-sampled) support position, `conv2` over the support dims at
    each query position, with the block's stride. Parameter names (conv1, conv2) match HSNet's checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=kernel_size // 2, bias=True)
        self.conv2 = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the center-pivot convolution of a 6D tensor; support dims shrink to ceil(size / stride)."""
        b, c, hq, wq, hs, ws = x.shape
        pruned = x[..., :: self.stride, :: self.stride] if self.stride > 1 else x
        hs2, ws2 = pruned.shape[-2:]
        # query branch: every kept support position is an independent 2D image over (Hq, Wq)
        q_in = pruned.permute(0, 4, 5, 1, 2, 3).reshape(b * hs2 * ws2, c, hq, wq)
        q_out = self.conv1(q_in)
        o = q_out.shape[1]
        q_out = q_out.view(b, hs2, ws2, o, hq, wq).permute(0, 3, 4, 5, 1, 2)
        # support branch: every query position is an independent 2D image over (Hs, Ws)
        s_in = x.permute(0, 2, 3, 1, 4, 5).reshape(b * hq * wq, c, hs, ws)
        s_out = self.conv2(s_in)
        s_out = s_out.view(b, hq, wq, o, hs2, ws2).permute(0, 3, 1, 2, 4, 5)
        return q_out + s_out
