"""Multi-head attention: q/k/v/o projections (optionally per codebook), rope, causal mask with an optional context
window, float32 softmax, grouped key/value heads and a KV ring cache."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.cache import KVCache
from models_flax.checks import check_positions
from models_flax.kernels.decode import MAX_STEPS, decode_attention
from models_flax.kernels.flash_attention import flash_attention
from models_flax.linear import einsum, make_linear
from models_flax.rope import RotaryEmbedding
from moshi_spec import TransformerConfig
from moshi_spec.checks import check_cache_capacity


def attention_mask(q_pos: jax.Array, k_pos: jax.Array, context: int | None) -> jax.Array:
    """(B, T) query and (B, S) key positions -> (B, T, S) bool: key valid, not in the future, within the context."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask = mask & (delta < context)
    return mask


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
    """q (B, T, H, D), k/v (B, S, Hkv, D), mask (B, T, S) -> (B, T, H, D); scores and softmax in float32."""
    batch, length, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    qg = q.reshape(batch, length, k.shape[2], groups, head_dim)  # head h uses key/value head h // groups
    scores = einsum("btkgd,bskd->bkgts", qg, k, precision=precision) / jnp.float32(math.sqrt(head_dim))
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v, precision=precision)
    return out.astype(q.dtype).reshape(batch, length, heads, head_dim)


IMPLS = ("xla", "pallas")
"""Attention implementations: the plain XLA path below, or the Pallas flash kernel (models_flax/kernels)."""


class Attention(nnx.Module):
    """Self-attention over (B, T, D) inputs at positions (B, T)."""

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
        if impl not in IMPLS:
            raise ValueError(f"Attention: unknown impl {impl!r}; known: {IMPLS}")
        self.cfg = cfg
        self.precision = precision
        self.impl = impl
        kw = dict(flexible=cfg.flexible, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.q_proj = make_linear(cfg.dim, cfg.q_dim, cfg.weight_sets, **kw)
        self.k_proj = make_linear(cfg.dim, cfg.kv_dim, cfg.weight_sets, **kw)
        self.v_proj = make_linear(cfg.dim, cfg.kv_dim, cfg.weight_sets, **kw)
        self.o_proj = make_linear(cfg.q_dim, cfg.dim, cfg.weight_sets, **kw)
        self.rotary_emb = (
            RotaryEmbedding(cfg.head_dim, theta=cfg.rope_theta, layout=cfg.rope_layout) if cfg.rope else None
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        positions: jax.Array,
        layer_idx: object = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        cfg = self.cfg
        if x.ndim != 3:
            raise ValueError(f"Attention: expected (B, T, {cfg.dim}), got {tuple(x.shape)}")
        check_positions("Attention", positions, x.shape[0], x.shape[1])
        q = self.q_proj(x, layer_idx=layer_idx)
        q = q.reshape(*q.shape[:2], cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x, layer_idx=layer_idx)
        k = k.reshape(*k.shape[:2], cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x, layer_idx=layer_idx)
        v = v.reshape(*v.shape[:2], cfg.num_kv_heads, cfg.head_dim)
        if q.shape[1] != positions.shape[1]:
            raise ValueError(
                f"Attention: layer_idx broadcast to {q.shape[1]} positions, positions has {positions.shape[1]}"
            )
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(q, positions=positions), self.rotary_emb(k, positions=positions)
        if cache is not None:
            check_cache_capacity(cache.capacity, x.shape[1], cfg.context)
            cache = cache.update(k, v, positions)
            k, v, k_pos = cache.keys, cache.values, cache.positions
        else:
            k_pos = positions
        if self.impl == "pallas":
            # A streaming step (a few queries against a cache) takes the split-K decode kernel.
            kernel = decode_attention if cache is not None and q.shape[1] <= MAX_STEPS else flash_attention
            out = kernel(q, k, v, q_positions=positions, k_positions=k_pos, context=cfg.context)
        else:
            out = dot_product_attention(
                q, k, v, attention_mask(positions, k_pos, cfg.context), precision=self.precision
            )
        return self.o_proj(out.reshape(*out.shape[:2], cfg.q_dim), layer_idx=layer_idx), cache
