"""Token embedding whose id -1 (kyutai's zero token) embeds to an exact zero vector."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.checks import check_dtype, concrete
from moshi_spec import ZERO_TOKEN


class Embedding(nnx.Module):
    """weight (V, D); ids in [0, V) or ZERO_TOKEN; anything else is an error when the ids are concrete."""

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_embeddings = num_embeddings
        self.dtype = check_dtype("Embedding", dtype)
        init = jax.random.normal(rngs.params(), (num_embeddings, dim), jnp.float32)
        self.weight = nnx.Param(init.astype(check_dtype("Embedding", param_dtype)))

    def __call__(self, ids: jax.Array) -> jax.Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"Embedding: ids must be integer, got {ids.dtype}")
        value = concrete(ids)
        if value is not None and value.size and (value.min() < ZERO_TOKEN or value.max() >= self.num_embeddings):
            raise ValueError(
                f"Embedding: ids must be in [0, {self.num_embeddings}) or {ZERO_TOKEN}, "
                f"got min {int(value.min())}, max {int(value.max())}"
            )
        rows = self.weight[...].astype(self.dtype)[jnp.maximum(ids, 0)]
        return jnp.where((ids == ZERO_TOKEN)[..., None], jnp.zeros((), self.dtype), rows)
