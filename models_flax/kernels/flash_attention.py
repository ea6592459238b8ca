"""Pallas flash attention (forward, prefill): causal by positions, optional context window, grouped key/value heads.

`flash_attention(q, k, v, *, q_positions, k_positions, context)` computes exactly what
`models_flax.attention.dot_product_attention(q, k, v, attention_mask(q_positions, k_positions, context))` computes:
key s is visible to query t when k_pos[s] >= 0 and 0 <= q_pos[t] - k_pos[s] < context (no context: no upper bound).
Masks come from POSITIONS, not indices, so rows may start at different offsets, q_len may differ from kv_len, and keys
may sit in any order (a ring cache). Scores are scaled by 1/sqrt(D) explicitly (JAX's own Pallas examples default to
1.0) and accumulated in float32 with an online softmax over key blocks. A query that sees no key at all gets the mean
of the values over all S slots, which is what the XLA path's softmax over an all-`finfo.min` row yields.

Layout: q (B, T, H, D), k/v (B, S, Hkv, D), positions (B, T) and (B, S); output (B, T, H, D) in q's dtype. Grid
(B, H, T / block_q). Traffic: q is padded to a block_q multiple; k and v are NOT copied: each program sees its kv head
(h // (H / Hkv)) whole and, when S is not a block_k multiple, loads the last block with a row mask (masked rows read
as 0). Only the positions (B, S) int32 are padded (with -1). Before the kernel, cheap jnp ops on the positions give each
(batch, query block) the range [lo, hi) of key blocks that may hold a visible pair (`live_block_ranges`: per-block
min/max of the positions, so conservative for unsorted ring-cache order); a program loops over that range only and still
skips, inside it, a block whose positions show no visible pair. The no-key fallback (mean of V) is computed inside the
program, by a second pass over V, only when one of its real rows saw no key; otherwise V is read once.

Precision: `precision=None` makes float32 dots exact (Precision.HIGHEST: IEEE fp32 in Triton, slow), bf16 dots use the
backend default; `jax.lax.Precision.DEFAULT` lets Triton use TF32 for float32 inputs (what XLA's GPU default does).

Runs with interpret=True on CPU (the default there), lowers through Triton on GPU (executed on an H100 and H200);
on TPU the same call runs models_flax/kernels/mosaic.py (TPU interpret mode and lowering only: no TPU was lent).
models_flax/kernels/dispatch.py picks the source per platform.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from models_flax.cache import HeadSplit
from models_flax.kernels.dispatch import KERNEL_PLATFORMS, KV_LAYOUTS, kv_shape, run_kernel
from models_flax.kernels.positions import live_block_ranges, pad_axis, softmax_scale, visible

DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
COMPILED_HEAD_DIMS = (64, 128)  # head dims supported when lowered (not interpreted); interpret mode takes any


@dataclass(frozen=True, kw_only=True)
class BlockSizes:
    """Tile sizes of the flash kernel. Powers of two; on GPU both must be >= 16 (Triton's dot).

    Attributes:
        block_q: query rows per program.
        block_k: keys per inner-loop step.
        num_warps: Triton warps per program (GPU only; None: Triton's default).
        num_stages: Triton software-pipelining stages (GPU only; None: Triton's default).
    """

    block_q: int = 128
    block_k: int = 128
    num_warps: int | None = None
    num_stages: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
                raise ValueError(f"BlockSizes.{name} must be a positive power of two, got {value!r}")

    @classmethod
    def for_backend(cls, backend: str | None = None, *, head_dim: int = 128) -> BlockSizes:
        """Defaults per backend: large tiles in interpret mode (fewer interpreted grid steps), Triton-sized on GPU."""
        backend = backend or jax.default_backend()
        if backend == "gpu" or backend == "cuda":
            # H100 sweep (bench/attention.py --sweep, bf16, T=S=3000, 32 heads x 128, window 3000): 64 x 32 tiles,
            # 4 warps: 0.612 ms; the previous 128 x 64, 8 warps: 0.720 ms; 24 tilings spanned 0.61-1.74 ms.
            # head_dim 64 is untuned.
            return cls(block_q=64, block_k=32, num_warps=4, num_stages=2)
        if backend == "tpu":
            return cls(block_q=128, block_k=128)
        return cls(block_q=128, block_k=128)


def dot_precision(dtype, precision: jax.lax.Precision | str | None) -> jax.lax.Precision | None:
    """The precision of the kernels' dots: None -> HIGHEST for float32 (exact f32), the backend default for bf16.

    Raises:
        ValueError: a value jax.lax.Precision does not name.
    """
    if precision is None:
        return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
    try:
        return jax.lax.Precision(precision)
    except ValueError:
        raise ValueError(f"precision must be None or a jax.lax.Precision (or its name), got {precision!r}") from None


def load_rows(ref, start: jax.Array, size: int, kv_len: int) -> jax.Array:
    """ref[start:start + size, :] of a (kv_len, D) ref; rows past kv_len read as 0 (a masked load, no padded copy)."""
    if kv_len % size == 0:  # static: blocks never cross the end
        return ref[pl.ds(start, size), :]
    rows = start + jnp.arange(size, dtype=jnp.int32)[:, None]
    return plgpu.load(ref.at[pl.ds(start, size), :], mask=rows < kv_len, other=0.0)


def sum_rows(v_ref, *, lo: jax.Array | int, hi: jax.Array | int, block_k: int, kv_len: int) -> jax.Array:
    """float32 (D,) sum of the rows of key blocks [lo, hi) of a (kv_len, D) ref (the no-key fallback's numerator)."""

    def step(j, total):
        v = load_rows(v_ref, pl.multiple_of(j * block_k, block_k), block_k, kv_len)
        return total + jnp.sum(v.astype(jnp.float32), axis=0)

    return jax.lax.fori_loop(lo, hi, step, jnp.zeros((v_ref.shape[-1],), jnp.float32))


def attend_block(
    j: jax.Array,
    carry: tuple[jax.Array, jax.Array, jax.Array],
    *,
    q: jax.Array,
    q_pos: jax.Array,
    k_ref,
    v_ref,
    kpos_ref,
    block_k: int,
    kv_len: int,
    context: int | None,
    precision: jax.lax.Precision | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Folds key block j of k_ref/v_ref (kv_len, D) into the online softmax (acc, m, den) of q (R, D) at q_pos (R,).

    A block whose positions (kpos_ref) show no visible pair is passed over without reading its keys and values.
    """
    start = pl.multiple_of(j * block_k, block_k)
    seen = visible(q_pos[:, None], kpos_ref[pl.ds(start, block_k)][None, :], context)

    def compute(carry):
        acc, m, den = carry
        k = load_rows(k_ref, start, block_k, kv_len)
        v = load_rows(v_ref, start, block_k, kv_len)
        s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32, precision=precision)
        s = jnp.where(seen, s * softmax_scale(q.shape[1]), -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no visible key yet: keep exp() away from inf - inf
        alpha = jnp.exp(m - m_safe)
        p = jnp.exp(s - m_safe[:, None])
        den_new = alpha * den + jnp.sum(p, axis=1)
        pv = jax.lax.dot_general(
            p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32, precision=precision
        )
        return acc * alpha[:, None] + pv, m_new, den_new

    # int max, not jnp.any: Triton lowers integer reductions, not boolean ones.
    live = jnp.max(seen.astype(jnp.int32)) > 0
    return jax.lax.cond(live, compute, lambda c: c, carry)


def attend_blocks(
    q: jax.Array,
    q_pos: jax.Array,
    k_ref,
    v_ref,
    kpos_ref,
    *,
    lo: jax.Array | int,
    hi: jax.Array | int,
    block_k: int,
    kv_len: int,
    context: int | None,
    precision: jax.lax.Precision | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Online softmax of q (R, D) over key blocks [lo, hi) of k_ref/v_ref (kv_len, D) at positions kpos_ref.

    Returns float32 (acc (R, D), running max m (R,), denominator den (R,)); out = acc / den where den > 0. Masked
    scores are -inf (they contribute exactly 0, as finfo.min does after the XLA path's max subtraction); a row with no
    visible key keeps den == 0 and m == -inf.
    """
    rows, head_dim = q.shape
    step = functools.partial(
        attend_block, q=q, q_pos=q_pos, k_ref=k_ref, v_ref=v_ref, kpos_ref=kpos_ref,
        block_k=block_k, kv_len=kv_len, context=context, precision=precision,
    )  # fmt: skip
    init = (
        jnp.zeros((rows, head_dim), jnp.float32),
        jnp.full((rows,), -jnp.inf, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )
    return jax.lax.fori_loop(lo, hi, step, init)


def _prefill_kernel(
    range_ref,
    qpos_ref,
    kpos_ref,
    q_ref,
    k_ref,
    v_ref,
    o_ref,
    *,
    length,
    kv_len,
    block_k,
    context,
    precision,
):
    acc, _, den = attend_blocks(
        q_ref[...],
        qpos_ref[...],
        k_ref,
        v_ref,
        kpos_ref,
        lo=range_ref[0],
        hi=range_ref[1],
        block_k=block_k,
        kv_len=kv_len,
        context=context,
        precision=precision,
    )
    block_q = den.shape[0]
    rows = pl.program_id(2) * block_q + jnp.arange(block_q, dtype=jnp.int32)
    # A real row (not padding) that saw no key needs the mean of V: a second pass over V, in this program only.
    missing = jnp.max(((den == 0) & (rows < length)).astype(jnp.int32)) > 0
    total = jax.lax.cond(
        missing,
        lambda: sum_rows(v_ref, lo=0, hi=pl.cdiv(kv_len, block_k), block_k=block_k, kv_len=kv_len),
        lambda: jnp.zeros((acc.shape[1],), jnp.float32),
    )
    out = jnp.where(den[:, None] > 0, acc / jnp.where(den > 0, den, 1.0)[:, None], (total / kv_len)[None, :])
    o_ref[...] = out.astype(o_ref.dtype)


def kv_block_spec(kv_layout: str, kv_len: int, head_dim: int, kv_head) -> pl.BlockSpec:
    """The whole (kv_len, D) key/value slab of one kv head, `kv_head(*grid_indices) -> (batch, kv head)`."""
    if kv_layout == "BHSD":
        return pl.BlockSpec((None, None, kv_len, head_dim), lambda *g: (*kv_head(*g), 0, 0))
    return pl.BlockSpec((None, kv_len, None, head_dim), lambda *g: (kv_head(*g)[0], 0, kv_head(*g)[1], 0))


def check_inputs(
    name: str, q, k, v, q_positions, k_positions, context, *, interpret: bool, kv_layout: str = "BSHD"
) -> tuple[int, int]:
    """Validates shapes and dtypes; returns (groups, head_dim). Raises ValueError/TypeError naming the values.
    Shapes in messages are (B, S, Hkv, D) whatever the layout."""
    ks, vs = kv_shape(k, kv_layout), kv_shape(v, kv_layout)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{name}: expected q (B,T,H,D), k/v (B,S,Hkv,D), got {q.shape}, {ks}, {vs}")
    batch, length, heads, head_dim = q.shape
    if ks != vs or ks[0] != batch or ks[3] != head_dim:
        raise ValueError(f"{name}: k {ks} and v {vs} must be (B={batch}, S, Hkv, D={head_dim})")
    if length < 1 or ks[1] < 1:
        raise ValueError(f"{name}: empty sequence, q {q.shape}, k {ks}")
    if heads % ks[2]:
        raise ValueError(f"{name}: {heads} query heads are not a multiple of {ks[2]} key/value heads")
    dtypes = {jnp.dtype(x.dtype) for x in (q, k, v)}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
        raise TypeError(f"{name}: q, k, v must share one dtype of float32/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not interpret and head_dim not in COMPILED_HEAD_DIMS:
        raise ValueError(f"{name}: head_dim {head_dim} unsupported when compiled; supported {COMPILED_HEAD_DIMS}")
    if tuple(q_positions.shape) != (batch, length) or tuple(k_positions.shape) != (batch, ks[1]):
        raise ValueError(
            f"{name}: positions {tuple(q_positions.shape)}, {tuple(k_positions.shape)} must be "
            f"({batch}, {length}) and ({batch}, {ks[1]})"
        )
    for pos in (q_positions, k_positions):
        if not jnp.issubdtype(pos.dtype, jnp.integer):
            raise TypeError(f"{name}: positions must be integers, got {pos.dtype}")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise ValueError(f"{name}: context must be None or a positive int, got {context!r}")
    return heads // ks[2], head_dim


def resolve(
    name: str, q, k, v, q_positions, k_positions, context, *, interpret, precision, kv_layout, platform
) -> tuple[int, jax.lax.Precision | None]:
    """The public kernels' common preamble: (head_dim, dot precision) after `check_inputs`; head dims are checked
    against the compiled kernels' unless the call interprets (interpret None: on CPU)."""
    if platform not in (None, *KERNEL_PLATFORMS):
        raise ValueError(f"{name}: platform must be None or one of {KERNEL_PLATFORMS}, got {platform!r}")
    interpreted = jax.default_backend() == "cpu" if interpret is None else interpret
    _, head_dim = check_inputs(
        name, q, k, v, q_positions, k_positions, context, interpret=interpreted, kv_layout=kv_layout
    )
    return head_dim, dot_precision(q.dtype, precision)


def compiler_params(block_sizes: BlockSizes, interpret: bool):
    """Triton compiler params when compiled (on a GPU, or exported for one); None when interpreted."""
    if interpret or block_sizes.num_warps is None:
        return None
    return plgpu.CompilerParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages or 2)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_positions: jax.Array,
    k_positions: jax.Array,
    context: int | None,
    block_sizes: BlockSizes | None = None,
    precision: jax.lax.Precision | str | None = None,
    kv_layout: str = "BSHD",
    interpret: bool | None = None,
    platform: str | None = None,
    split: HeadSplit | None = None,
) -> jax.Array:
    """Flash attention forward: q (B, T, H, D), k/v (B, S, Hkv, D), positions (B, T) / (B, S) -> (B, T, H, D).

    Same result as `dot_product_attention(q, k, v, attention_mask(q_positions, k_positions, context))`.

    Args:
        block_sizes: tiles, `BlockSizes` (Triton source) or `MosaicBlockSizes` (TPU); default per platform.
        precision: of the two dots; None: HIGHEST for float32 (exact), backend default for bf16.
            `jax.lax.Precision.DEFAULT` allows TF32 for float32 on GPU (XLA's own GPU default; ~1e-3 relative).
        kv_layout: "BSHD" (k/v (B, S, Hkv, D)) or "BHSD" ((B, Hkv, S, D), the KVCache layout: no transpose).
        interpret: True: the Pallas interpreter (TPU interpret mode for the Mosaic source); None: on CPU only.
        platform: the kernel source, "gpu" (Triton) or "tpu" (Mosaic); None: the one of the platform the program is
            lowered for (see `run_kernel`).
        split: the caches' `HeadSplit` on a mesh: the kernel runs per device on its kv heads (`run_kernel`).

    Raises:
        ValueError/TypeError: bad ranks, mismatched shapes, heads not a multiple of kv heads, a dtype other than
            float32/bfloat16, a head_dim other than 64/128 when compiled, non-integer positions, a bad context or
            precision.
    """
    _, precision = resolve(
        "flash_attention", q, k, v, q_positions, k_positions, context,
        interpret=interpret, precision=precision, kv_layout=kv_layout, platform=platform,
    )  # fmt: skip
    return run_kernel(
        (q, k, v, q_positions, k_positions), _triton_prefill, BlockSizes, context=context, block_sizes=block_sizes,
        precision=precision, kv_layout=kv_layout, interpret=interpret, platform=platform, decode=False, split=split,
    )  # fmt: skip


def _triton_prefill(q, k, v, q_positions, k_positions, *, context, block_sizes, interpret, precision, kv_layout):
    batch, length, heads, head_dim = q.shape
    _, kv_len, kv_heads, _ = kv_shape(k, kv_layout)
    groups = heads // kv_heads
    # Small inputs: shrink tiles to the (power-of-two) padded length instead of padding to a full default tile.
    block_q = min(block_sizes.block_q, pl.next_power_of_2(length))
    block_k = min(block_sizes.block_k, pl.next_power_of_2(kv_len))
    t_pad, s_pad = pl.cdiv(length, block_q) * block_q, pl.cdiv(kv_len, block_k) * block_k
    qp = pad_axis(q, 1, t_pad, 0)
    q_pos = pad_axis(q_positions.astype(jnp.int32), 1, t_pad, -1)  # padded queries see nothing; their rows are dropped
    k_pos = pad_axis(k_positions.astype(jnp.int32), 1, s_pad, -1)  # keys past kv_len are invalid (k, v are not padded)
    ranges = live_block_ranges(q_pos, k_pos, block_q=block_q, block_k=block_k, context=context)
    kernel = functools.partial(
        _prefill_kernel, length=length, kv_len=kv_len, block_k=block_k, context=context, precision=precision
    )
    out = pl.pallas_call(
        kernel,
        grid=(batch, heads, t_pad // block_q),
        in_specs=[
            pl.BlockSpec((None, None, 2), lambda b, h, i: (b, i, 0)),
            pl.BlockSpec((None, block_q), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, s_pad), lambda b, h, i: (b, 0)),
            pl.BlockSpec((None, block_q, None, head_dim), lambda b, h, i: (b, i, h, 0)),
            kv_block_spec(kv_layout, kv_len, head_dim, lambda b, h, i: (b, h // groups)),
            kv_block_spec(kv_layout, kv_len, head_dim, lambda b, h, i: (b, h // groups)),
        ],
        out_specs=pl.BlockSpec((None, block_q, None, head_dim), lambda b, h, i: (b, i, h, 0)),
        out_shape=jax.ShapeDtypeStruct(qp.shape, q.dtype),
        interpret=interpret,
        compiler_params=compiler_params(block_sizes, interpret),
        name="flash_attention_prefill",
    )(ranges, q_pos, k_pos, qp, k, v)
    return out[:, :length]


def reference_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, q_positions: jax.Array, k_positions: jax.Array, context: int | None
) -> jax.Array:
    """Plain jnp attention with the kernel's semantics: f32 scores scaled by 1/sqrt(D), f32 softmax, grouped heads."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    mask = visible(q_positions[:, :, None], k_positions[:, None, :], context)  # (B, T, S)
    qg = q.astype(jnp.float32).reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(jnp.float32), precision="highest") / math.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).astype(jnp.float32)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32), precision="highest")
    return out.astype(q.dtype).reshape(batch, length, heads, head_dim)


__all__ = ["KERNEL_PLATFORMS", "KV_LAYOUTS", "BlockSizes", "flash_attention", "reference_attention"]
