"""Rotary position embedding with per-row positions, float32 math, half-split or interleaved pairs (kyutai's math)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.checks import check_positions
from moshi_spec.checks import check_rope


def inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
    """kyutai's formula, exp(-log(theta) * 2i / D); HF's theta^(-2i/D) rounds differently in float32."""
    return jnp.exp(jnp.arange(head_dim // 2, dtype=jnp.float32) * jnp.float32(-math.log(theta) * 2 / head_dim))


def rotation_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """(B, T) positions -> (B, T, 1, D/2) angles, position x frequency, in float32 whatever the activations' dtype
    (kyutai and HF both do: a bfloat16 angle is off by up to position x 2^-9 rad)."""
    return positions.astype(jnp.float32)[..., None, None] * inverse_frequencies(head_dim, theta)


class RotaryEmbedding(nnx.Module):
    """Rotates (B, T, H, D) queries or keys by their positions (B, T)."""

    def __init__(self, head_dim: int, *, theta: float, layout: str):
        check_rope(head_dim, theta, layout)
        self.head_dim, self.theta, self.layout = head_dim, theta, layout

    def __call__(self, x: jax.Array, *, positions: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(f"RotaryEmbedding: expected (B, T, H, {self.head_dim}), got {tuple(x.shape)}")
        check_positions("RotaryEmbedding", positions, x.shape[0], x.shape[1])
        half = self.head_dim // 2
        angles = rotation_angles(positions, self.head_dim, self.theta)
        cos, sin = jnp.cos(angles), jnp.sin(angles)  # (B, T, 1, D/2)
        x32 = x.astype(jnp.float32)
        if self.layout == "interleaved":
            pairs = x32.reshape(*x.shape[:-1], half, 2)
            xr, xi = pairs[..., 0], pairs[..., 1]
        else:
            xr, xi = x32[..., :half], x32[..., half:]
        out_r, out_i = (xr * cos - xi * sin).astype(x.dtype), (xr * sin + xi * cos).astype(x.dtype)
        if self.layout == "interleaved":
            return jnp.stack([out_r, out_i], axis=-1).reshape(x.shape)
        return jnp.concatenate([out_r, out_i], axis=-1)
