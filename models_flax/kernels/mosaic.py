"""Pallas attention for TPU (Mosaic): one kernel for prefill and for decode, with the semantics of `flash_attention`.

Why a second kernel source: Mosaic wants the last two dimensions of every block divisible by (8, 128) or equal to the
array's, keeps per-program state in VMEM scratch across a sequential ("arbitrary") grid axis rather than in a loop
carry, and reads scalars from SMEM; the Triton kernels (flash_attention.py, decode.py) break the first rule with their
per-row position blocks, and Triton has neither of the others. Everything else (the masking rule, the 1/sqrt(D)
scale, the float32 online softmax, the live key-block ranges, the no-key fallback) is the same as theirs.

Layout. Query heads fold into rows: for kv head h, row r = g * T + t holds query step t of grouped head g (T queries x
H/Hkv heads), so a kv head's keys and values are read once for all of its query heads, in prefill as in decode.
q rows (B, Hkv, R, D), k/v (B, Hkv, S, D) (the KVCache layout; "BSHD" inputs are transposed first). Grid
(B, Hkv, R / block_q, S / block_k): the key axis is the sequential one, the online-softmax state (running max,
denominator, float32 accumulator) lives in VMEM scratch, and the output is written at the last key block.

Positions reach the kernel as tiles Mosaic accepts: query positions broadcast over 128 lanes (B, R, 128), key
positions over 8 sublanes (B, 8, S). The live range [lo, hi) of key blocks per (batch, row block) is scalar-prefetched
into SMEM; the key/value index maps clamp the grid's key block into that range, so a dead block is neither computed
nor fetched (the clamped index repeats the previous one and the pipeline skips the copy).

A cache length that is not a block_k multiple leaves the last block partial: Mosaic fills its tail with whatever memory
holds, so the kernel masks those keys by position (padded with -1) and zeroes those values before the second dot
(0 x NaN would be NaN). A query row that sees no key gets the mean of V over all S slots, as the XLA path's all-masked
softmax row does; which rows those are is decided from the positions before the kernel (`rows_without_keys`), and V is
read for it only when some row needs it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from models_flax.kernels.positions import live_block_ranges, pad_axis, rows_without_keys, softmax_scale, visible

LANES, SUBLANES = 128, 8
NO_CONTEXT = 2**30  # the window of `context=None`: wider than any position (positions stay below 2**30)


@dataclass(frozen=True, kw_only=True)
class MosaicBlockSizes:
    """Tiles of the TPU kernel.

    Attributes:
        block_q: query rows (steps x grouped heads) per program, a multiple of 8; fewer rows take one block of all.
        block_k: keys per sequential grid step, a multiple of 128; a shorter cache takes one block of all its keys.
    """

    block_q: int = 128
    block_k: int = 128

    def __post_init__(self) -> None:
        for name, multiple in (("block_q", SUBLANES), ("block_k", LANES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < multiple or value % multiple:
                raise ValueError(f"MosaicBlockSizes.{name} must be a positive multiple of {multiple}, got {value!r}")

    @classmethod
    def for_chip(cls, generation: int | None = None, *, decode: bool = False) -> MosaicBlockSizes:
        """Tiles from the chip's MXU width (`mxu_width`): a square MXU tile for prefill, 4 MXU widths of keys per step
        for decode (few rows, so fewer and longer steps). Derived from the hardware, not tuned on a TPU (none was lent
        to this project). generation: the TPU generation (4 for v4, 5 for v5e/v5p, 6 for v6e, ...); None: the chip
        this process runs on, else 5."""
        if generation is None:
            generation = tpu_generation(jax.devices()[0].device_kind) if jax.default_backend() == "tpu" else 5
        width = mxu_width(generation)
        return cls(block_q=SUBLANES if decode else width, block_k=4 * width if decode else width)

    def layout(self, rows: int, kv_len: int) -> tuple[int, int]:
        """(block_q, block_k) for this call: a block never exceeds the (8-row padded) rows or the cache."""
        block_q = min(self.block_q, pl.cdiv(rows, SUBLANES) * SUBLANES)
        block_k = kv_len if kv_len <= self.block_k else self.block_k
        return block_q, block_k


def mxu_width(generation: int) -> int:
    """The MXU's width: 128 x 128 up to v5 (v5e, v5p), 256 x 256 from v6e (`pltpu.get_tpu_info_for_chip`'s table;
    parity/test_pallas.py checks it against the installed jax's)."""
    return 256 if generation >= 6 else 128


def tpu_generation(device_kind: str) -> int:
    """The generation in a TPU's device_kind ("TPU v4" -> 4, "TPU v5 lite" -> 5, "TPU v6e" -> 6, "TPU7x" -> 7)."""
    found = re.search(r"(\d+)", device_kind)
    if found is None:
        raise ValueError(f"tpu_generation: no generation number in device kind {device_kind!r}")
    return int(found.group(1))


def interpret_params() -> pltpu.InterpretParams:
    """TPU interpret mode as the tests run it: reads past a buffer raise, uninitialised memory (a partial block's
    tail) reads as NaN, so a value the kernel forgets to mask shows up in its output."""
    return pltpu.InterpretParams(out_of_bounds_reads="raise", uninitialized_memory="nan")


def attends(j: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Whether the grid's key block j is in its row block's live range [lo, hi) (the others are neither fetched nor
    computed)."""
    return (j >= lo) & (j < hi)


def _kernel(
    ranges_ref,
    context_ref,
    qpos_ref,
    kpos_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    m_ref,
    l_ref,
    acc_ref,
    *,
    row_blocks,
    kv_len,
    precision,
):
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    lo = ranges_ref[2 * (b * row_blocks + i)]
    hi = ranges_ref[2 * (b * row_blocks + i) + 1]
    block_k = k_ref.shape[0]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when(attends(j, lo, hi))
    def _attend():
        q, k, v = q_ref[...], k_ref[...], v_ref[...]
        seen = visible(qpos_ref[:, 0:1], kpos_ref[0:1, :], context_ref[0])  # (block_q, 1) x (1, block_k)
        if kv_len % block_k:  # the last block is partial: its tail is not ours to read as values
            key = j * block_k + jax.lax.broadcasted_iota(jnp.int32, (block_k, 1), 0)
            v = jnp.where(key < kv_len, v, jnp.zeros_like(v))
        s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32, precision=precision)
        s = jnp.where(seen, s * softmax_scale(q.shape[1]), -jnp.inf)
        m_prev = m_ref[...]  # (block_q, 128), every lane equal
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # no visible key yet: keep exp() away from inf - inf
        alpha = jnp.exp(m_prev - m_safe)
        p = jnp.exp(s - m_safe[:, 0:1])
        l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
        m_ref[...] = m_next
        pv = jax.lax.dot_general(
            p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32, precision=precision
        )
        acc_ref[...] = acc_ref[...] * alpha[:, 0:1] + pv

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        den = l_ref[...][:, 0:1]
        o_ref[...] = (acc_ref[...] / jnp.where(den > 0, den, 1.0)).astype(o_ref.dtype)  # no key: 0, filled later


def mosaic_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_positions: jax.Array,
    k_positions: jax.Array,
    context: int | jax.Array | None,
    *,
    block_sizes: MosaicBlockSizes,
    precision: jax.lax.Precision | None,
    kv_layout: str,
    interpret: bool,
) -> jax.Array:
    """q (B, T, H, D), k/v (B, S, Hkv, D) or (B, Hkv, S, D) ("BHSD"), positions (B, T) / (B, S) -> (B, T, H, D).

    Inputs are checked by the public entry points (`flash_attention`, `decode_attention`), which call this on TPU or
    in TPU interpret mode. `context` may be traced (an int32 scalar, scalar-prefetched into SMEM like the block
    ranges): one compiled kernel serves every window.
    """
    context = jnp.asarray(NO_CONTEXT if context is None else context, jnp.int32)
    if kv_layout == "BSHD":
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    batch, length, heads, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    rows = groups * length
    block_q, block_k = block_sizes.layout(rows, kv_len)
    r_pad, row_blocks, kv_blocks = pl.cdiv(rows, block_q) * block_q, pl.cdiv(rows, block_q), pl.cdiv(kv_len, block_k)
    qr = q.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    qr = pad_axis(qr.reshape(batch, kv_heads, rows, head_dim), 2, r_pad, 0)
    q_pos = pad_axis(jnp.tile(q_positions.astype(jnp.int32), (1, groups)), 1, r_pad, -1)  # row g * T + t: step t
    k_pos = pad_axis(k_positions.astype(jnp.int32), 1, kv_blocks * block_k, -1)
    ranges = live_block_ranges(q_pos, k_pos, block_q=block_q, block_k=block_k, context=context).reshape(-1)

    def live(b, i, j, ranges_ref, _context_ref):  # the grid's key block, clamped into this row block's live range
        lo, hi = ranges_ref[2 * (b * row_blocks + i)], ranges_ref[2 * (b * row_blocks + i) + 1]
        return jnp.minimum(jnp.maximum(j, lo), jnp.maximum(hi - 1, lo))

    kv_spec = pl.BlockSpec((None, None, block_k, head_dim), lambda b, h, i, j, *r: (b, h, live(b, i, j, *r), 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(batch, kv_heads, row_blocks, kv_blocks),
        in_specs=[
            pl.BlockSpec((None, block_q, LANES), lambda b, h, i, j, *r: (b, i, 0)),
            pl.BlockSpec((None, SUBLANES, block_k), lambda b, h, i, j, *r: (b, 0, live(b, i, j, *r))),
            pl.BlockSpec((None, None, block_q, head_dim), lambda b, h, i, j, *r: (b, h, i, 0)),
            kv_spec,
            kv_spec,
        ],
        out_specs=pl.BlockSpec((None, None, block_q, head_dim), lambda b, h, i, j, *r: (b, h, i, 0)),
        scratch_shapes=[
            pltpu.VMEM((block_q, LANES), jnp.float32),
            pltpu.VMEM((block_q, LANES), jnp.float32),
            pltpu.VMEM((block_q, head_dim), jnp.float32),
        ],
    )
    kernel = functools.partial(_kernel, row_blocks=row_blocks, kv_len=kv_len, precision=precision)
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(qr.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret_params() if interpret else False,
        name="flash_attention_mosaic",
    )(
        ranges,
        context[None],
        jnp.broadcast_to(q_pos[:, :, None], (batch, r_pad, LANES)),
        jnp.broadcast_to(k_pos[:, None, :], (batch, SUBLANES, k_pos.shape[1])),
        qr,
        k,
        v,
    )
    out = out[:, :, :rows].reshape(batch, kv_heads, groups, length, head_dim).transpose(0, 3, 1, 2, 4)
    out = out.reshape(batch, length, heads, head_dim)
    missing = rows_without_keys(q_positions, k_positions, context)  # (B, T)

    def with_fallback(out):
        mean = jnp.mean(v.astype(jnp.float32), axis=2)  # (B, Hkv, D): the softmax of an all-masked row
        mean = jnp.repeat(mean, groups, axis=1).astype(out.dtype)[:, None]
        return jnp.where(missing[:, :, None, None], mean, out)

    return jax.lax.cond(jnp.any(missing), with_fallback, lambda out: out, out)


def mosaic_call(
    args: tuple,
    context: int | None,
    *,
    block_sizes: MosaicBlockSizes,
    precision: jax.lax.Precision | None,
    kv_layout: str,
    interpret: bool | None,
) -> jax.Array:
    """`mosaic_attention` as `platform="tpu"` calls it: jitted with the window as a traced int32, so that one compile
    per shape serves every window; interpret None: TPU interpret mode on CPU, compiled elsewhere."""
    interpret = jax.default_backend() == "cpu" if interpret is None else interpret
    window = jnp.int32(NO_CONTEXT if context is None else context)
    return _mosaic_jit(
        *args, window, block_sizes=block_sizes, precision=precision, kv_layout=kv_layout, interpret=interpret
    )


_mosaic_jit = jax.jit(mosaic_attention, static_argnames=("block_sizes", "precision", "kv_layout", "interpret"))

__all__ = ["MosaicBlockSizes", "interpret_params", "mosaic_attention", "mosaic_call"]
