"""Rotary position embedding with per-row positions, float32 math, half-split or interleaved pairs (kyutai's math)."""

from __future__ import annotations

import math

import torch
from torch import nn

from models_ref.checks import check_positions
from moshi_spec.checks import check_rope


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """kyutai's formula, exp(-log(theta) * 2i / D); HF's theta^(-2i/D) rounds differently in float32."""
    return torch.exp(torch.arange(head_dim // 2, dtype=torch.float32) * (-math.log(theta) * 2 / head_dim))


class RotaryEmbedding(nn.Module):
    """Rotates (B, T, H, D) queries or keys by their positions (B, T)."""

    def __init__(self, head_dim: int, *, theta: float, layout: str):
        super().__init__()
        check_rope(head_dim, theta, layout)
        self.head_dim, self.theta, self.layout = head_dim, theta, layout

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(f"RotaryEmbedding: expected (B, T, H, {self.head_dim}), got {tuple(x.shape)}")
        check_positions("RotaryEmbedding", positions, x.shape[0], x.shape[1])
        half = self.head_dim // 2
        angles = positions.float()[..., None, None] * inverse_frequencies(self.head_dim, self.theta).to(x.device)
        cos, sin = torch.cos(angles), torch.sin(angles)  # (B, T, 1, D/2)
        if self.layout == "interleaved":
            pairs = x.float().unflatten(-1, (half, 2))
            xr, xi = pairs[..., 0], pairs[..., 1]
        else:
            xr, xi = x[..., :half].float(), x[..., half:].float()
        out_r, out_i = xr * cos - xi * sin, xr * sin + xi * cos
        if self.layout == "interleaved":
            return torch.stack([out_r.to(x.dtype), out_i.to(x.dtype)], dim=-1).flatten(-2)
        return torch.cat([out_r.to(x.dtype), out_i.to(x.dtype)], dim=-1)
