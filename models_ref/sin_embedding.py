"""kyutai's sinusoidal position embedding (`create_sin_embedding`), added to a stack's input: computed in the input's
dtype step by step as kyutai does (in bfloat16 the positions, the exponents and the periods all round)."""

from __future__ import annotations

import torch

from moshi_spec import TransformerConfig


def sin_embedding(positions: torch.Tensor, dim: int, *, max_period: float, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) positions -> (B, T, dim): [cos(p / f_i), sin(p / f_i)], f_i = max_period ** (i / (dim/2 - 1))."""
    half = dim // 2
    p = positions.to(dtype)[..., None]
    exponents = torch.arange(half, device=positions.device, dtype=dtype) / (half - 1)
    phase = p / (torch.full([], max_period, device=positions.device, dtype=dtype) ** exponents)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def add_sin_embedding(cfg: TransformerConfig, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) + positional_scale * the embedding of positions (B, T) when cfg has sin_embedding, else x."""
    if not cfg.sin_embedding:
        return x
    return x + cfg.positional_scale * sin_embedding(positions, x.shape[-1], max_period=cfg.rope_theta, dtype=x.dtype)
