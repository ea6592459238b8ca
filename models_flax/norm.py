"""RMSNorm with float32 math and an explicit eps; the output keeps the input dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.checks import check_dtype, check_input


class RMSNorm(nnx.Module):
    """weight (D,); y = x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, *, eps: float, dtype: object = jnp.float32, param_dtype: object = jnp.float32):
        if eps < 0:
            raise ValueError(f"RMSNorm: eps must be >= 0, got {eps}")
        self.dim, self.eps = dim, eps
        self.dtype = check_dtype("RMSNorm", dtype)
        self.weight = nnx.Param(jnp.ones((dim,), check_dtype("RMSNorm", param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input("RMSNorm", x, rank=3, last=self.dim, dtype=self.dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * self.weight[...].astype(jnp.float32)).astype(x.dtype)
