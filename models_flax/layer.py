"""Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(.)); each update through a LayerScale when the config
has kyutai's layer_scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.attention import Attention
from models_flax.cache import KVCache
from models_flax.layer_scale import LayerScale
from models_flax.mlp import make_mlp
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
        self.mlp = make_mlp(cfg, **kw)
        scale = dict(init=cfg.layer_scale, dtype=dtype, param_dtype=param_dtype)  # kyutai's layer_scale_1 / _2
        self.self_attn_layer_scale = None if cfg.layer_scale is None else LayerScale(cfg.dim, **scale)
        self.mlp_layer_scale = None if cfg.layer_scale is None else LayerScale(cfg.dim, **scale)

    def __call__(
        self,
        x: jax.Array,
        *,
        positions: jax.Array,
        layer_idx: object = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        update, cache = self.self_attn(self.input_layernorm(x), positions=positions, layer_idx=layer_idx, cache=cache)
        x = x + _scaled(self.self_attn_layer_scale, update)
        x = x + _scaled(self.mlp_layer_scale, self.mlp(self.post_attention_layernorm(x), layer_idx=layer_idx))
        return x, cache


def _scaled(layer_scale: LayerScale | None, update: jax.Array) -> jax.Array:
    return update if layer_scale is None else layer_scale(update)
