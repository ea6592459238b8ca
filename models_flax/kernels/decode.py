"""Pallas decode attention: 1 to 4 query steps against a KV ring cache (split-K "flash decoding").

`decode_attention(q, k, v, *, q_positions, k_positions, context)` has the semantics of `flash_attention` (and of the XLA
path `dot_product_attention(q, k, v, attention_mask(...))`) for q_len in 1..MAX_STEPS; k/v are a cache (B, S, Hkv, D)
whose positions (B, S) are in ring order with -1 for empty slots (models_flax.cache.KVCache), so visibility is decided
per key from positions, never from slot indices.

Decoding is memory-bound: each program takes ONE kv head and all of its query rows (T steps x H/Hkv grouped heads,
padded to a tile), so every key and value is read once; the cache axis is split over `num_splits` programs that each
return an unnormalized float32 partial (acc, running max, denominator), merged afterwards in jnp (log-sum-exp combine).
Grid (B, Hkv, num_splits).

Traffic per call (the cache is B*S*Hkv*D*2 elements): K and V are read once, by the kernel, and only the key blocks in
the live range of `live_block_ranges` (all of them for a full cache inside the window). Nothing copies the cache: k and
v are not padded (a cache length that is not a block_k multiple gets a masked load of its last block), only the
positions (B, S) int32 are. The no-key fallback (mean of V over all S slots, as the XLA path's all-masked softmax row)
costs a second read of V only in a call where some real query row sees no key at all, decided from the positions
before the kernel (`missing` below); a decoding step always sees its own key, so in generation it never happens. The
rest is small: q, positions, and the partials (B*Hkv*splits*rows*(D+2) float32) written and re-read by the combine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from models_flax.cache import HeadSplit
from models_flax.kernels.dispatch import kv_shape, run_kernel
from models_flax.kernels.flash_attention import (
    attend_blocks,
    compiler_params,
    kv_block_spec,
    reference_attention,
    resolve,
    sum_rows,
)
from models_flax.kernels.positions import live_block_ranges, pad_axis, visible

MAX_STEPS = 4


@dataclass(frozen=True, kw_only=True)
class DecodeBlockSizes:
    """Tiles of the decode kernel.

    Attributes:
        block_k: keys per inner-loop step (power of two).
        num_splits: programs the cache axis is split over; None: enough to give ~256 programs (GPU) or 1 (interpret).
        min_rows: query rows are padded to at least this (Triton's dot needs 16).
        num_warps, num_stages: Triton settings (GPU only).
    """

    block_k: int = 128
    num_splits: int | None = None
    min_rows: int = 8
    num_warps: int | None = None
    num_stages: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.block_k, bool) or not isinstance(self.block_k, int) or self.block_k < 1:
            raise ValueError(f"DecodeBlockSizes.block_k must be a positive power of two, got {self.block_k!r}")
        if self.block_k & (self.block_k - 1):
            raise ValueError(f"DecodeBlockSizes.block_k must be a positive power of two, got {self.block_k!r}")
        if self.num_splits is not None and (not isinstance(self.num_splits, int) or self.num_splits < 1):
            raise ValueError(f"DecodeBlockSizes.num_splits must be None or a positive int, got {self.num_splits!r}")

    @classmethod
    def for_backend(cls, backend: str | None = None) -> DecodeBlockSizes:
        backend = backend or jax.default_backend()
        if backend in ("gpu", "cuda"):
            return cls(block_k=64, num_splits=None, min_rows=16, num_warps=4, num_stages=2)
        return cls(block_k=128, num_splits=1, min_rows=8)

    def splits(self, batch: int, kv_heads: int, kv_blocks: int) -> int:
        if self.num_splits is not None:
            return max(1, min(self.num_splits, kv_blocks))
        return max(1, min(kv_blocks, 256 // max(1, batch * kv_heads)))

    def layout(self, batch: int, kv_heads: int, kv_len: int) -> tuple[int, int, int]:
        """(block_k, blocks_per_split, splits) the kernel uses for this cache: the tile shrinks to a short cache, and
        the splits are recounted so that none is empty (two settings with one layout compile to one kernel)."""
        block_k = min(self.block_k, pl.next_power_of_2(kv_len))
        kv_blocks = pl.cdiv(kv_len, block_k)
        blocks_per_split = pl.cdiv(kv_blocks, self.splits(batch, kv_heads, kv_blocks))
        return block_k, blocks_per_split, pl.cdiv(kv_blocks, blocks_per_split)


def _decode_kernel(
    info_ref,
    qpos_ref,
    kpos_ref,
    q_ref,
    k_ref,
    v_ref,
    acc_ref,
    m_ref,
    l_ref,
    vsum_ref,
    *,
    blocks_per_split,
    kv_len,
    block_k,
    context,
    precision,
):
    first = pl.program_id(2) * blocks_per_split
    last = jnp.minimum(first + blocks_per_split, pl.cdiv(kv_len, block_k))
    acc, m, den = attend_blocks(
        q_ref[...],
        qpos_ref[...],
        k_ref,
        v_ref,
        kpos_ref,
        lo=jnp.maximum(info_ref[0], first),
        hi=jnp.minimum(info_ref[1], last),
        block_k=block_k,
        kv_len=kv_len,
        context=context,
        precision=precision,
    )
    acc_ref[...] = acc
    m_ref[...] = m
    l_ref[...] = den
    vsum_ref[...] = jax.lax.cond(
        info_ref[2] > 0,
        lambda: sum_rows(v_ref, lo=first, hi=last, block_k=block_k, kv_len=kv_len),
        lambda: jnp.zeros((acc.shape[1],), jnp.float32),
    )


def decode_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_positions: jax.Array,
    k_positions: jax.Array,
    context: int | None,
    block_sizes: DecodeBlockSizes | None = None,
    precision: jax.lax.Precision | str | None = None,
    kv_layout: str = "BSHD",
    interpret: bool | None = None,
    platform: str | None = None,
    split: HeadSplit | None = None,
) -> jax.Array:
    """q (B, T, H, D) with 1 <= T <= 4, cache k/v (B, S, Hkv, D), positions (B, T) / (B, S) -> (B, T, H, D).

    Args:
        block_sizes: tiles, `DecodeBlockSizes` (Triton source) or `MosaicBlockSizes` (TPU); default per platform.
        precision: as `flash_attention` (None: exact float32 dots; jax.lax.Precision.DEFAULT: TF32 on GPU).
        kv_layout: "BSHD", or "BHSD" for k/v (B, Hkv, S, D) as KVCache holds them.
        interpret, platform, split: as `flash_attention` (the Mosaic source serves prefill and decode alike).

    Raises:
        ValueError/TypeError: as `flash_attention`, and for T outside 1..4.
    """
    _, precision = resolve(
        "decode_attention", q, k, v, q_positions, k_positions, context,
        interpret=interpret, precision=precision, kv_layout=kv_layout, platform=platform,
    )  # fmt: skip
    if not 1 <= q.shape[1] <= MAX_STEPS:
        raise ValueError(f"decode_attention: {q.shape[1]} query steps; decode takes 1..{MAX_STEPS}")
    return run_kernel(
        (q, k, v, q_positions, k_positions), _triton_decode, DecodeBlockSizes, context=context,
        block_sizes=block_sizes, precision=precision, kv_layout=kv_layout, interpret=interpret, platform=platform,
        decode=True, split=split,
    )  # fmt: skip


def _triton_decode(q, k, v, q_positions, k_positions, *, context, block_sizes, interpret, precision, kv_layout):
    batch, steps, heads, head_dim = q.shape
    _, kv_len, kv_heads, _ = kv_shape(k, kv_layout)
    groups = heads // kv_heads
    block_k, blocks_per_split, splits = block_sizes.layout(batch, kv_heads, kv_len)
    s_pad = pl.cdiv(kv_len, block_k) * block_k
    rows = steps * groups
    r_pad = max(block_sizes.min_rows, pl.next_power_of_2(rows))
    # Row r = t * groups + g holds query step t of grouped head g of this kv head.
    qr = q.reshape(batch, steps, kv_heads, groups, head_dim).transpose(0, 2, 1, 3, 4)
    qr = pad_axis(qr.reshape(batch, kv_heads, rows, head_dim), 2, r_pad, 0)
    q_positions = q_positions.astype(jnp.int32)
    q_pos = pad_axis(jnp.repeat(q_positions, groups, axis=1), 1, r_pad, -1)
    k_pos = pad_axis(k_positions.astype(jnp.int32), 1, s_pad, -1)  # keys past kv_len are invalid (k, v are not padded)
    ranges = live_block_ranges(q_pos, k_pos, block_q=r_pad, block_k=block_k, context=context)
    # Some real query step sees no key at all: the kernel then also sums V for the fallback (reads positions only).
    sees = jax.vmap(lambda qp, kp: jnp.any(visible(qp[:, None], kp[None, :], context), axis=1))(
        q_positions, k_positions.astype(jnp.int32)
    )
    missing = jnp.any(~sees, axis=1).astype(jnp.int32)
    info = jnp.concatenate([ranges[:, 0], missing[:, None], jnp.zeros_like(missing)[:, None]], axis=1)  # (B, 4)
    kernel = functools.partial(
        _decode_kernel,
        blocks_per_split=blocks_per_split,
        kv_len=kv_len,
        block_k=block_k,
        context=context,
        precision=precision,
    )
    f32 = jnp.float32
    acc, m, den, vsum = pl.pallas_call(
        kernel,
        grid=(batch, kv_heads, splits),
        in_specs=[
            pl.BlockSpec((None, 4), lambda b, h, s: (b, 0)),
            pl.BlockSpec((None, r_pad), lambda b, h, s: (b, 0)),
            pl.BlockSpec((None, s_pad), lambda b, h, s: (b, 0)),
            pl.BlockSpec((None, None, r_pad, head_dim), lambda b, h, s: (b, h, 0, 0)),
            kv_block_spec(kv_layout, kv_len, head_dim, lambda b, h, s: (b, h)),
            kv_block_spec(kv_layout, kv_len, head_dim, lambda b, h, s: (b, h)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, r_pad, head_dim), lambda b, h, s: (b, h, s, 0, 0)),
            pl.BlockSpec((None, None, None, r_pad), lambda b, h, s: (b, h, s, 0)),
            pl.BlockSpec((None, None, None, r_pad), lambda b, h, s: (b, h, s, 0)),
            pl.BlockSpec((None, None, None, head_dim), lambda b, h, s: (b, h, s, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, kv_heads, splits, r_pad, head_dim), f32),
            jax.ShapeDtypeStruct((batch, kv_heads, splits, r_pad), f32),
            jax.ShapeDtypeStruct((batch, kv_heads, splits, r_pad), f32),
            jax.ShapeDtypeStruct((batch, kv_heads, splits, head_dim), f32),
        ],
        interpret=interpret,
        compiler_params=compiler_params(block_sizes, interpret),
        name="flash_attention_decode",
    )(info, q_pos, k_pos, qr, k, v)
    fallback = jnp.sum(vsum, axis=2, keepdims=True) / kv_len  # (B, Hkv, 1, D); zeros unless `missing`
    out = combine_splits(acc, m, den, fallback)[:, :, :rows]
    out = out.reshape(batch, kv_heads, steps, groups, head_dim).transpose(0, 2, 1, 3, 4)
    return out.reshape(batch, steps, heads, head_dim).astype(q.dtype)


def combine_splits(acc: jax.Array, m: jax.Array, den: jax.Array, fallback: jax.Array) -> jax.Array:
    """Merges partials acc (..., P, R, D), m/den (..., P, R) over P; rows that see no key get `fallback` (..., 1, D)."""
    m_all = jnp.max(m, axis=-2)
    m_safe = jnp.where(m_all == -jnp.inf, 0.0, m_all)
    w = jnp.exp(m - m_safe[..., None, :])  # splits that saw nothing have m = -inf: weight 0
    denom = jnp.sum(w * den, axis=-2)
    num = jnp.sum(w[..., None] * acc, axis=-3)
    return jnp.where(denom[..., None] > 0, num / jnp.where(denom > 0, denom, 1.0)[..., None], fallback)


def reference_decode(
    q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array, k_positions: jax.Array, context: int | None
) -> jax.Array:
    """Plain jnp decode: the same masked float32 softmax as the prefill reference (decode differs only in tiling)."""
    if not 1 <= q.shape[1] <= MAX_STEPS:
        raise ValueError(f"reference_decode: {q.shape[1]} query steps; decode takes 1..{MAX_STEPS}")
    return reference_attention(q, k, v, q_positions=q_positions, k_positions=k_positions, context=context)


__all__ = ["MAX_STEPS", "DecodeBlockSizes", "decode_attention", "reference_decode"]
