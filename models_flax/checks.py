"""Input validation shared by the Flax layers. Shape and dtype checks are static; value checks (index ranges, negative
positions) run whenever the values are concrete, i.e. outside jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def check_dtype(name: str, dtype: object) -> jnp.dtype:
    dt = jnp.dtype(dtype)
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: unsupported dtype {dt}; supported: {[str(d) for d in SUPPORTED_DTYPES]}")
    return dt


def check_input(name: str, x: jax.Array, *, rank: int, last: int, dtype: jnp.dtype) -> None:
    """x must have the given rank, last-axis width and exactly the layer's compute dtype (no silent casts)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    if x.ndim != rank:
        raise ValueError(f"{name}: expected a rank-{rank} input (..., {last}), got shape {tuple(x.shape)}")
    if x.shape[-1] != last:
        raise ValueError(f"{name}: expected last axis {last}, got shape {tuple(x.shape)}")
    if jnp.dtype(x.dtype) != dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from the layer's dtype {dtype}; cast explicitly")


def concrete(x: object) -> np.ndarray | None:
    """The value of x if it is known now (not a tracer), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def check_positions(name: str, positions: jax.Array, batch: int, length: int) -> None:
    if not hasattr(positions, "dtype") or not jnp.issubdtype(positions.dtype, jnp.integer):
        raise TypeError(f"{name}: positions must be an integer array, got {getattr(positions, 'dtype', positions)}")
    if tuple(positions.shape) != (batch, length):
        raise ValueError(f"{name}: positions must have shape (B, T) = {(batch, length)}, got {tuple(positions.shape)}")
    value = concrete(positions)
    if value is not None and value.size and value.min() < 0:
        raise ValueError(f"{name}: positions must be >= 0, got min {int(value.min())}")
