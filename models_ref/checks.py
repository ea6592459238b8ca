"""Input validation shared by the refactored PyTorch layers: bad input is an error naming what was wrong."""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def check_dtype(name: str, dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: unsupported dtype {dtype}; supported: {[str(d) for d in SUPPORTED_DTYPES]}")


def check_input(name: str, x: torch.Tensor, *, rank: int, last: int, dtype: torch.dtype) -> None:
    """x must have the given rank, last-axis width and exactly the layer's dtype (no silent casts)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name}: expected a rank-{rank} input (..., {last}), got shape {tuple(x.shape)}")
    if x.shape[-1] != last:
        raise ValueError(f"{name}: expected last axis {last}, got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from the layer's dtype {dtype}; cast explicitly")


def check_positions(name: str, positions: torch.Tensor, batch: int, length: int) -> None:
    if not isinstance(positions, torch.Tensor) or positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: positions must be an integer tensor, got {getattr(positions, 'dtype', positions)}")
    if tuple(positions.shape) != (batch, length):
        raise ValueError(f"{name}: positions must have shape (B, T) = {(batch, length)}, got {tuple(positions.shape)}")
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"{name}: positions must be >= 0, got min {int(positions.min())}")
