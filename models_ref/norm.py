"""The norms of kyutai's `create_norm_fn`: RMSNorm (float32 math, or the input's dtype) and LayerNorm (weight and
bias, float32 math); `make_norm` picks one by a config's `norm` kind. The output keeps the input dtype."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.checks import check_dtype, check_input
from moshi_spec import TransformerConfig


class RMSNorm(nn.Module):
    """weight (D,); y = x / sqrt(mean(x^2) + eps) * weight.

    upcast=True (kyutai rms_norm_f32, HF): computed in float32, rounded once. upcast=False (kyutai rms_norm): computed
    in the input's dtype as kyutai writes it, x * (weight * rsqrt(eps + mean(x^2))), each op rounded.
    """

    def __init__(self, dim: int, *, eps: float, dtype: torch.dtype = torch.float32, upcast: bool = True):
        super().__init__()
        check_dtype("RMSNorm", dtype)
        if eps < 0:
            raise ValueError(f"RMSNorm: eps must be >= 0, got {eps}")
        self.dim, self.eps, self.upcast = dim, eps, upcast
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("RMSNorm", x, rank=3, last=self.dim, dtype=self.weight.dtype)
        if not self.upcast:
            var = self.eps + x.pow(2).mean(-1, keepdim=True)
            return x * (self.weight.to(x.dtype) * torch.rsqrt(var))
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class LayerNorm(nn.Module):
    """weight (D,), bias (D,); y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis.

    Computed in float32 (weights too) and rounded once to the input dtype: what torch's nn.LayerNorm does for a
    bfloat16 input with bfloat16 weights (checked bit for bit on CPU), and plain float32 math otherwise. kyutai's
    layer_norm and layer_norm_f32 therefore differ only in eps.
    """

    def __init__(self, dim: int, *, eps: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_dtype("LayerNorm", dtype)
        if eps < 0:
            raise ValueError(f"LayerNorm: eps must be >= 0, got {eps}")
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("LayerNorm", x, rank=3, last=self.dim, dtype=self.weight.dtype)
        x32 = x.float()
        mean = x32.mean(-1, keepdim=True)
        var = (x32 - mean).pow(2).mean(-1, keepdim=True)
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        return (y * self.weight.float() + self.bias.float()).to(x.dtype)


def make_norm(cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32) -> RMSNorm | LayerNorm:
    """The norm of cfg's kind (`cfg.norm`) over cfg.dim, with cfg.norm_eps."""
    if cfg.layer_norm:
        return LayerNorm(cfg.dim, eps=cfg.norm_eps, dtype=dtype)
    return RMSNorm(cfg.dim, eps=cfg.norm_eps, dtype=dtype, upcast=cfg.norm_upcast)
