"""kyutai's sinusoidal position embedding (`create_sin_embedding`), added to a stack's input, in the input's dtype.

kyutai computes every step in that dtype; so does this port, with two guards that keep float32 at torch's rounding:
the periods f_i = max_period ** (i / (D/2 - 1)) are a host table (each step rounded to the dtype as torch rounds it;
the power itself correctly rounded, where torch's float32 pow is off by one ulp in about 1% of entries at D = 4096),
and the division p / f_i is a true division (XLA rewrites a division by a broadcast divisor into a multiplication by
its reciprocal, off by an ulp of the phase: the optimization barrier keeps the divisor opaque). Measured on XLA:CPU
against kyutai for D in 16..4096 and positions below 5000: float32 within one ulp of cos/sin, bfloat16 bit-exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moshi_spec import TransformerConfig


def periods(dim: int, max_period: float, dtype: object) -> np.ndarray:
    """(dim/2,) f_i in `dtype`, rounded step by step as kyutai's torch code in that dtype rounds them."""
    dt = np.dtype(dtype)
    half = dim // 2
    exponents = (np.arange(half).astype(dt).astype(np.float32) / np.float32(half - 1)).astype(dt)
    base = np.float64(np.asarray(max_period, dt))
    return (base ** exponents.astype(np.float64)).astype(np.float32).astype(dt)


def phases(positions: jax.Array, dim: int, *, max_period: float, dtype: object) -> jax.Array:
    """(B, T) positions -> (B, T, dim/2) p / f_i, each a correctly rounded division in `dtype`."""
    p = positions.astype(dtype)[..., None]
    table = jnp.asarray(periods(dim, max_period, dtype))
    return p / jax.lax.optimization_barrier(jnp.broadcast_to(table, (*p.shape[:-1], dim // 2)))


def sin_embedding(positions: jax.Array, dim: int, *, max_period: float, dtype: object) -> jax.Array:
    """(B, T) positions -> (B, T, dim): [cos(p / f_i), sin(p / f_i)]."""
    phase = phases(positions, dim, max_period=max_period, dtype=dtype)
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


def add_sin_embedding(cfg: TransformerConfig, x: jax.Array, positions: jax.Array) -> jax.Array:
    """x (B, T, D) + positional_scale * the embedding of positions (B, T) when cfg has sin_embedding, else x.

    The scale multiplies in float32 and rounds once, as torch's Python-scalar product does (jnp would round the scale
    to bfloat16 first)."""
    if not cfg.sin_embedding:
        return x
    emb = sin_embedding(positions, x.shape[-1], max_period=cfg.rope_theta, dtype=x.dtype)
    return x + (emb.astype(jnp.float32) * np.float32(cfg.positional_scale)).astype(x.dtype)
