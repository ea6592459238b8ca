"""Input validation shared by the refactored PyTorch layers: bad input is an error naming what was wrong."""

from __future__ import annotations

import torch

from moshi_spec import ZERO_TOKEN

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


def check_int_tensor(where: str, name: str, x: object, layout: str) -> None:
    """x must be a torch tensor of integers (a list, a numpy array, a float or bool tensor is a TypeError)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch integer tensor {layout}, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{where}: {name} must be integers, got {x.dtype} of shape {tuple(x.shape)}")


def check_ids(where: str, name: str, ids: torch.Tensor, *, vocab: int, offset: tuple[int, ...] = ()) -> torch.Tensor:
    """Token ids (any shape, any integer dtype) must be in [0, vocab) or ZERO_TOKEN: a ValueError naming the first bad
    one (its index shifted by `offset`), its value, the valid range and the number of bad ids (models_flax's message).
    Returns them as int64 (torch's index dtype; a uint8 tensor would index as a mask)."""
    ids = ids.long()
    ok = (ids < vocab) & ((ids >= 0) | (ids == ZERO_TOKEN))
    if bool(ok.all()):
        return ids
    first = torch.nonzero(~ok)[0].tolist()
    index = tuple(i + s for i, s in zip(first, offset or (0,) * ids.dim(), strict=True))
    raise ValueError(
        f"{where}: {name} must be in [0, {vocab}) or {ZERO_TOKEN} (the zero token); got {int(ids[tuple(first)])} at "
        f"index ({', '.join(map(str, index))}) ({int((~ok).sum())} out of range)"
    )
