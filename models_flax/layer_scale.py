"""LayerScale (kyutai's, Touvron et al. 2021): a learnt per-channel scale on a residual update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.checks import check_dtype, check_input


class LayerScale(nnx.Module):
    """scale (D,), initialised to `init`; y = scale * x in x's dtype (as kyutai: channels last)."""

    def __init__(self, dim: int, *, init: float = 0.01, dtype: object = jnp.float32, param_dtype: object = jnp.float32):
        self.dim = dim
        self.dtype = check_dtype("LayerScale", dtype)
        self.scale = nnx.Param(jnp.full((dim,), init, check_dtype("LayerScale", param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input("LayerScale", x, rank=3, last=self.dim, dtype=self.dtype)
        return self.scale[...].astype(self.dtype) * x
