"""Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(.))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.attention import Attention
from models_flax.cache import KVCache
from models_flax.mlp import GatingMLP
from models_flax.norm import make_norm
from moshi_spec import TransformerConfig


class DecoderLayer(nnx.Module):
    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        impl: str = "xla",
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.input_layernorm = make_norm(cfg, dtype=dtype, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, impl=impl, **kw)
        self.post_attention_layernorm = make_norm(cfg, dtype=dtype, param_dtype=param_dtype)
        self.mlp = GatingMLP(cfg, **kw)

    def __call__(
        self,
        x: jax.Array,
        *,
        positions: jax.Array,
        layer_idx: object = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        update, cache = self.self_attn(self.input_layernorm(x), positions=positions, layer_idx=layer_idx, cache=cache)
        x = x + update
        x = x + self.mlp(self.post_attention_layernorm(x), layer_idx=layer_idx)
        return x, cache
