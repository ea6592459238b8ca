"""RMSNorm with float32 math and an explicit eps; the output keeps the input dtype."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.checks import check_dtype, check_input


class RMSNorm(nn.Module):
    """weight (D,); y = x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, *, eps: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_dtype("RMSNorm", dtype)
        if eps < 0:
            raise ValueError(f"RMSNorm: eps must be >= 0, got {eps}")
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("RMSNorm", x, rank=3, last=self.dim, dtype=self.weight.dtype)
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)
