"""LayerScale (kyutai's, Touvron et al. 2021): a learnt per-channel scale on a residual update."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.checks import check_dtype, check_input


class LayerScale(nn.Module):
    """scale (D,), a learnt per-channel factor (initialised to `init`); y = scale * x over the last axis."""

    def __init__(self, dim: int, *, init: float = 0.01, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_dtype("LayerScale", dtype)
        self.dim = dim
        self.scale = nn.Parameter(torch.full((dim,), init, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("LayerScale", x, rank=3, last=self.dim, dtype=self.scale.dtype)
        return self.scale * x
