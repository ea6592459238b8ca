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
    return blockwise_attention(q, [(k, v, mask, "BSHD")], precision=precision)


def blockwise_attention(q: jax.Array, blocks: list[tuple], *, precision: jax.lax.PrecisionLike = None) -> jax.Array:
    """One softmax over several key blocks [(k, v, mask (B, T, S_i), kv_layout)], keys never concatenated.

    A cached step attends to the cache as it was plus the step's own keys (two blocks), so that the dots do not read
    the updated cache: on XLA:CPU that read made the cache update materialize a second, full copy of the cache every
    layer and step. With one block this is exactly `dot_product_attention`.
    """
    batch, length, heads, head_dim = q.shape
    layouts = {"BSHD": "bskd", "BHSD": "bksd"}
    kv_heads = blocks[0][0].shape[2] if blocks[0][3] == "BSHD" else blocks[0][0].shape[1]
    qg = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)  # head h uses key/value head h // groups
    scores = []
    for k, _, mask, layout in blocks:
        block = einsum(f"btkgd,{layouts[layout]}->bkgts", qg, k, precision=precision) / jnp.float32(math.sqrt(head_dim))
        scores.append(jnp.where(mask[:, None, None], block, jnp.finfo(jnp.float32).min))
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    out, start = None, 0
    for (_, v, _, layout), block in zip(blocks, scores, strict=True):
        p = probs[..., start : start + block.shape[-1]].astype(v.dtype)
        # Batch dims (b, k) leading in the output: with "btkgd" XLA:CPU transposes a whole (B, Hkv, S, D) cache
        # per step for a 1-query dot (measured 19 ms against 4.5 ms per layer at S=3000, 8 heads of 128).
        term = einsum(f"bkgts,{layouts[layout]}->bkgtd", p, v, precision=precision)
        out, start = term if out is None else out + term, start + block.shape[-1]
    return out.transpose(0, 3, 1, 2, 4).astype(q.dtype).reshape(batch, length, heads, head_dim)


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
        # models_flax.training.lora attaches the LoRA adapter of the fused q/k/v projection here
        self.qkv_lora: nnx.Module | None = nnx.data(None)
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
        q, k, v = (proj(x, layer_idx=layer_idx) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.qkv_lora is not None:  # one adapter on the fused [q; k; v] projection, as kyutai's in_projs
            delta = self.qkv_lora(x, layer_idx=layer_idx)
            splits = (cfg.q_dim, cfg.q_dim + cfg.kv_dim)
            q, k, v = ((y + d).astype(y.dtype) for y, d in zip((q, k, v), jnp.split(delta, splits, -1), strict=True))
        q = q.reshape(*q.shape[:2], cfg.num_heads, cfg.head_dim)
        k = k.reshape(*k.shape[:2], cfg.num_kv_heads, cfg.head_dim)
        v = v.reshape(*v.shape[:2], cfg.num_kv_heads, cfg.head_dim)
        if q.shape[1] != positions.shape[1]:
            raise ValueError(
                f"Attention: layer_idx broadcast to {q.shape[1]} positions, positions has {positions.shape[1]}"
            )
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(q, positions=positions), self.rotary_emb(k, positions=positions)
        if cache is None:
            if self.impl == "pallas":
                out = flash_attention(q, k, v, q_positions=positions, k_positions=positions, context=cfg.context,
                                      precision=self.precision)  # fmt: skip
            else:
                mask = attention_mask(positions, positions, cfg.context)
                out = dot_product_attention(q, k, v, mask, precision=self.precision)
        else:
            check_cache_capacity(cache.capacity, x.shape[1], cfg.context)
            updated = cache.update(k, v, positions)  # deferred caches (streaming) only record the chunk
            if self.impl == "pallas":  # a streaming step (a few queries) takes the split-K decode kernel
                view = updated.commit()
                kernel = decode_attention if q.shape[1] <= MAX_STEPS else flash_attention
                out = kernel(q, view.keys, view.values, q_positions=positions, k_positions=view.positions,
                             context=cfg.context, kv_layout="BHSD", precision=self.precision,
                             split=view.split)  # fmt: skip
            else:
                out = self._attend_cached(q, k, v, positions, cache)
            cache = updated
        return self.o_proj(out.reshape(*out.shape[:2], cfg.q_dim), layer_idx=layer_idx), cache

    def _attend_cached(self, q, k, v, positions, cache: KVCache) -> jax.Array:
        """Attention of a chunk to the cache as it was (minus the slots the chunk overwrites) and to its own keys:
        what attending to the updated cache gives, without reading it."""
        context = self.cfg.context
        kept = attention_mask(positions, cache.positions, context) & ~cache.written(positions)[:, None]
        blocks = [
            (cache.keys, cache.values, kept, "BHSD"),
            (k, v, attention_mask(positions, positions, context), "BSHD"),
        ]
        return blockwise_attention(q, blocks, precision=self.precision)


def pallas_layers(module: nnx.Module) -> list[str]:
    """The paths of `module`'s attention layers that run the Pallas kernels (impl "pallas"), sorted."""
    return sorted(
        ".".join(map(str, path))
        for path, node in nnx.iter_graph(module)
        if isinstance(node, Attention) and node.impl == "pallas"
    )
