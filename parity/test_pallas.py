"""Pallas attention kernels (interpret mode on CPU) against the XLA path, their jnp references and kyutai.

Prefill and decode draw lengths that are not block multiples (tiles of 8 here), q_len != kv_len, per-row offsets,
context windows, grouped kv heads, empty (-1) and ring-ordered cache slots. The layer tests run the Flax Attention
layer on the kernels ("flax[attention=pallas]", on small tiles) against kyutai's attention in one pass and against our
PyTorch ref step by step through the ring cache. Structural tests check that the live key-block ranges
are conservative and that nothing but the kernel reads the keys and values (no padded copy, no separate mean of V).
Negative controls plant an off-by-one mask, the 1.0 scale of JAX's own Pallas examples, a skipped key block and a key
range one block short by monkeypatching one module-level function of the kernel modules (`visible`, `softmax_scale`,
`attend_block`, `live_block_ranges`), with JAX's trace caches cleared around the patch; the same case passes unpatched.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental.pallas import tpu as pltpu

import models_flax.attention as xla_attention
import models_flax.kernels.decode as decode_module
import models_flax.kernels.flash_attention as flash_module
import models_flax.kernels.mosaic as mosaic_module
from models_flax.kernels.decode import decode_attention, reference_decode
from models_flax.kernels.flash_attention import (
    dot_precision,
    flash_attention,
    live_block_ranges,
    reference_attention,
)
from models_flax.kernels.mosaic import MosaicBlockSizes, tpu_generation
from parity.harness.checks import attention_component, compare_pair
from parity.harness.compare import ParityError, assert_parity
from parity.harness.kernel_tiles import DECODE_TILES, TILES, use_small_tiles
from parity.harness.strategies import ATTENTION_MAGNITUDES, AttentionCase, attention_cases, cases, configs

COMPONENT = "pallas_attention"
XLA = "flax[attention=xla]"  # the reference of every kernel comparison: the XLA path of the same Flax attention
KERNEL_LABELS = {"prefill": "flax[attention=pallas]", "decode": "flax[attention=pallas,decode]"}
MOSAIC_LABELS = {"prefill": "flax[attention=mosaic]", "decode": "flax[attention=mosaic,decode]"}
JNP_REFERENCE = "flax[attention=jnp_reference]"
JAX_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _inputs(case: AttentionCase):
    dt = JAX_DTYPES[case.dtype]
    arrays = (jnp.asarray(case.q, dt), jnp.asarray(case.k, dt), jnp.asarray(case.v, dt))
    kw = dict(q_positions=jnp.asarray(case.q_positions), k_positions=jnp.asarray(case.k_positions))
    return arrays, kw


# The references run jitted, one program per shape: eager, their ~20 ops compile one by one, ~0.5 s per drawn shape
# against ~0.1 s. The same ops: on CPU bit-identical to the eager results (checked on 30 drawn cases in float32 and
# bfloat16; the root conftest's --xla_allow_excess_precision=false rounds a jitted bf16 op as eager does).
@functools.partial(jax.jit, static_argnames="context")
def _xla_attention(q, k, v, q_positions, k_positions, context):
    mask = xla_attention.attention_mask(q_positions, k_positions, context)
    return xla_attention.dot_product_attention(q, k, v, mask, precision="highest")


_JNP_REFERENCES = {
    "prefill": jax.jit(reference_attention, static_argnames="context"),
    "decode": jax.jit(reference_decode, static_argnames="context"),
}


def _xla(case: AttentionCase):
    (q, k, v), kw = _inputs(case)
    return _xla_attention(q, k, v, **kw, context=case.context)


def _compare(reference, candidate, case: AttentionCase, pair: tuple[str, str], control: str | None = None):
    return assert_parity(
        reference,
        candidate,
        component=COMPONENT,
        pair=pair,
        expected_dtype=case.dtype,
        inputs={"q": case.q.shape, "k": case.k.shape},
        hypothesis=case.describe(),
        control=control,
    )


def _prefill(case: AttentionCase):
    (q, k, v), kw = _inputs(case)
    return flash_attention(q, k, v, **kw, context=case.context, block_sizes=TILES)


def _decode(case: AttentionCase):
    (q, k, v), kw = _inputs(case)
    return decode_attention(q, k, v, **kw, context=case.context, block_sizes=DECODE_TILES)


KERNELS = {"prefill": _prefill, "decode": _decode}


# Interpret-mode kernels compile once per shape (~1 s each) and drawn shapes rarely repeat: the layer-level tests run a
# fraction of the profile's examples (ci: 15 -> 7 kernel-level, 3 layer-level; nightly: 200 -> 100, 50).
KERNEL_EXAMPLES = max(5, settings.default.max_examples // 2)
LAYER_EXAMPLES = max(3, settings.default.max_examples // 4)


@settings(max_examples=KERNEL_EXAMPLES)
@given(case=attention_cases(head_dims=(8, 16, 64, 128)))
def test_prefill_matches_xla(case):
    """The kernel and its jnp reference both equal the XLA path."""
    (q, k, v), kw = _inputs(case)
    reference = _xla(case)
    _compare(reference, _prefill(case), case, (XLA, KERNEL_LABELS["prefill"]))
    _compare(reference, _JNP_REFERENCES["prefill"](q, k, v, **kw, context=case.context), case, (XLA, JNP_REFERENCE))


@settings(max_examples=KERNEL_EXAMPLES)
@given(case=attention_cases(steps=(1, 2, 3, 4), kv_lengths=(5, 12, 21), ring=True))
def test_decode_matches_xla(case):
    """One to four steps against a ring cache: slots out of position order, empty slots, a window past the capacity."""
    (q, k, v), kw = _inputs(case)
    reference = _xla(case)
    _compare(reference, _decode(case), case, (XLA, KERNEL_LABELS["decode"]))
    _compare(reference, _JNP_REFERENCES["decode"](q, k, v, **kw, context=case.context), case, (XLA, JNP_REFERENCE))


# The smallest tiles Mosaic accepts: 9+ rows (steps x grouped heads) span row blocks, 129+ keys span key blocks with a
# partial last one. The TPU interpreter runs each grid step on the CPU, so the drawn caches stay at a few hundred keys.
MOSAIC_TILES = MosaicBlockSizes(block_q=8, block_k=128)
MOSAIC_CASES = {
    "prefill": attention_cases(steps=(1, 9, 17), kv_lengths=(5, 21, 140, 300), head_dims=(16, 64, 128)),
    "decode": attention_cases(steps=(1, 2, 3, 4), kv_lengths=(5, 140, 300), head_dims=(16, 64, 128), ring=True),
}


def _mosaic(kernel: str, case: AttentionCase):
    """Prefill on (B, S, Hkv, D) keys; decode on the KVCache's (B, Hkv, S, D), as `Attention` calls them."""
    (q, k, v), kw = _inputs(case)
    if kernel == "prefill":
        return flash_attention(q, k, v, **kw, context=case.context, block_sizes=MOSAIC_TILES, platform="tpu")
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    return decode_attention(
        q, k, v, **kw, context=case.context, block_sizes=MOSAIC_TILES, kv_layout="BHSD", platform="tpu"
    )


# The TPU interpreter costs ~2 s to compile and ~0.5 s to run a case: a quarter of the profile's examples (ci: 15 -> 3,
# nightly: 200 -> 50), beside the nightly twin at Moshi's head size below.
@pytest.mark.parametrize("kernel", sorted(MOSAIC_CASES))
@settings(max_examples=LAYER_EXAMPLES)
@given(data=st.data())
def test_mosaic_matches_xla_in_tpu_interpret_mode(kernel, data):
    """The TPU (Mosaic) kernel run by the TPU interpreter (its VMEM/SMEM, scalar prefetch and block pipeline, reads
    past a buffer raise, unwritten memory reads as NaN) equals the XLA path; decode against ring-ordered caches."""
    case = data.draw(MOSAIC_CASES[kernel])
    _compare(_xla(case), _mosaic(kernel, case), case, (XLA, MOSAIC_LABELS[kernel]))


@pytest.mark.nightly
@pytest.mark.parametrize("kernel", ("prefill", "decode"))
def test_mosaic_at_moshi_shapes_in_tpu_interpret_mode(kernel):
    """The nightly twin of the test above at Moshi's temporal head size, on the default (v5e) tiles: 32 heads of 128
    in bf16, one decoding step against a full 3000-slot ring cache, or a 512-step prefill of 4 heads."""
    rng = np.random.default_rng(0)
    steps, kv_len, heads = (512, 512, 4) if kernel == "prefill" else (1, 3000, 32)
    q = rng.standard_normal((1, steps, heads, 128)).astype(np.float32)
    k, v = (rng.standard_normal((1, kv_len, heads, 128)).astype(np.float32) for _ in range(2))
    written = np.arange(3100 - kv_len, 3100) if kernel == "decode" else np.arange(kv_len)
    k_pos = np.empty((1, kv_len), np.int64)
    k_pos[0, written % kv_len] = written
    case = AttentionCase("bfloat16", q, k, v, written[None, -steps:], k_pos, 3000)
    (qj, kj, vj), kw = _inputs(case)
    fn = flash_attention if kernel == "prefill" else decode_attention
    out = fn(qj, kj, vj, **kw, context=case.context, platform="tpu", interpret=True)
    _compare(_xla(case), out, case, (XLA, MOSAIC_LABELS[kernel]))


def test_mosaic_tiles_follow_the_mxu_of_each_tpu_generation():
    """The tile table's MXU widths are the installed jax's hardware table's, for every chip it knows."""
    for chip in pltpu.ChipVersion:
        info = pltpu.get_tpu_info_for_chip(chip, 1)
        tiles = MosaicBlockSizes.for_chip(info.generation)
        assert (tiles.block_q, tiles.block_k) == (info.mxu_column_size,) * 2, chip
    assert [tpu_generation(kind) for kind in ("TPU v4", "TPU v5 lite", "TPU v5p", "TPU v6e", "TPU7x")] == [
        4,
        5,
        5,
        6,
        7,
    ]


def _no_key_case(kv_len: int) -> AttentionCase:
    """Query 0 sits at position -5 and sees no key; key slot 2 is empty; window 2."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 3, 2, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, kv_len, 1, 16)).astype(np.float32) for _ in range(2))
    k_pos = np.arange(kv_len)[None]
    k_pos[0, 2] = -1
    return AttentionCase("float32", q, k, v, np.array([[-5, kv_len - 2, kv_len - 1]]), k_pos, 2)


@pytest.mark.parametrize("kv_len", (5, 12))  # the decode tiles (block_k 4): a ragged last block, and none
def test_default_tiles_and_row_without_keys(kv_len):
    """Default (backend) tiles and split decode tiles, and a query that sees no key: the XLA path's uniform softmax,
    i.e. the mean of the values over all S slots (the empty one included)."""
    case = _no_key_case(kv_len)
    (qj, kj, vj), kw = _inputs(case)
    reference = _xla(case)
    for kernel, out in (
        ("prefill", flash_attention(qj, kj, vj, **kw, context=2)),
        ("prefill", _prefill(case)),
        ("decode", decode_attention(qj, kj, vj, **kw, context=2)),
        ("decode", _decode(case)),
    ):
        _compare(reference, out, case, (XLA, KERNEL_LABELS[kernel]))
        np.testing.assert_allclose(np.asarray(out[0, 0, 0]), case.v[0].mean(axis=0)[0], rtol=1e-6, atol=1e-6)


_RANGES = jax.jit(live_block_ranges, static_argnames=("block_q", "block_k", "context"))


@settings(max_examples=2 * KERNEL_EXAMPLES)
@given(case=attention_cases(steps=(1, 3, 9, 17), kv_lengths=(5, 12, 21, 40), ring=True))
def test_live_block_ranges_are_conservative(case):
    """Every (query block, key block) pair holding a visible pair lies inside the query block's [lo, hi) range, for
    ring (unsorted) positions with empty slots and windows shorter than the cache."""
    block_q, block_k = 4, 4
    q_pos = np.full((case.q.shape[0], -(-case.q.shape[1] // block_q) * block_q), -1)
    k_pos = np.full((case.k.shape[0], -(-case.k.shape[1] // block_k) * block_k), -1)
    q_pos[:, : case.q.shape[1]], k_pos[:, : case.k.shape[1]] = case.q_positions, case.k_positions
    ranges = np.asarray(
        _RANGES(jnp.asarray(q_pos, jnp.int32), jnp.asarray(k_pos, jnp.int32), block_q=block_q, block_k=block_k,
                context=case.context)
    )  # fmt: skip
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    visible = (k_pos[:, None, :] >= 0) & (delta >= 0) & (delta < (case.context or np.inf))
    blocks = visible.reshape(q_pos.shape[0], -1, block_q, k_pos.shape[1] // block_k, block_k).any(axis=(2, 4))
    for b, i in np.ndindex(blocks.shape[:2]):
        lo, hi = ranges[b, i]
        assert 0 <= lo <= hi <= blocks.shape[2], (b, i, lo, hi)
        assert not blocks[b, i, :lo].any() and not blocks[b, i, hi:].any(), (b, i, lo, hi, blocks[b, i])


def test_live_block_ranges_narrow_a_causal_window():
    """Sorted causal positions with a window: early query blocks stop at the diagonal, late ones start past 0."""
    pos = jnp.arange(64, dtype=jnp.int32)[None]
    ranges = np.asarray(live_block_ranges(pos, pos, block_q=16, block_k=16, context=16))
    np.testing.assert_array_equal(ranges[0], [[0, 1], [0, 2], [1, 3], [2, 4]])


def _foreign_readers(fn, *arrays) -> list[str]:
    """Primitives other than pallas_call that take one of `arrays` (or a value aliasing it through a jit) as input."""

    def walk(jaxpr, aliases) -> list[str]:
        found = []
        for eqn in jaxpr.eqns:
            used = [
                i for i, var in enumerate(eqn.invars) if not isinstance(var, jax.extend.core.Literal) and var in aliases
            ]
            if not used or eqn.primitive.name == "pallas_call":
                continue
            inner = eqn.params.get("jaxpr")
            if inner is not None and hasattr(inner, "jaxpr"):  # pjit / closed_call: follow the argument inside
                found += walk(inner.jaxpr, {inner.jaxpr.invars[i] for i in used})
            else:
                found.append(eqn.primitive.name)
        return found

    closed = jax.make_jaxpr(fn)(*arrays)
    return walk(closed.jaxpr, set(closed.jaxpr.invars))


@pytest.mark.parametrize("kv_len", (16, 21))  # a multiple of the tiles and not: neither gets a padded copy
def test_kernels_alone_read_keys_and_values(kv_len):
    """The cache's only reader is the Triton-source kernel: no jnp.pad copy of k/v, no separate mean of V (decode
    traffic). (With platform None the jaxpr holds every platform's branch, the Mosaic one among them.)"""
    q = jnp.zeros((2, 3, 4, 16))
    k = v = jnp.zeros((2, kv_len, 2, 16))
    q_pos = jnp.full((2, 3), kv_len - 1, jnp.int32)
    k_pos = jnp.broadcast_to(jnp.arange(kv_len, dtype=jnp.int32), (2, kv_len))
    kw = dict(q_positions=q_pos, k_positions=k_pos, context=7, platform="gpu")
    assert _foreign_readers(lambda k, v: decode_attention(q, k, v, **kw, block_sizes=DECODE_TILES), k, v) == []
    assert _foreign_readers(lambda k, v: flash_attention(q, k, v, **kw, block_sizes=TILES), k, v) == []


def test_precision_argument():
    """None: exact float32 dots (HIGHEST), backend default for bf16; DEFAULT (TF32 on GPU) is accepted and, on CPU,
    gives the same numbers; a name that is no Precision is refused."""
    assert dot_precision(jnp.float32, None) == jax.lax.Precision.HIGHEST
    assert dot_precision(jnp.bfloat16, None) is None
    assert dot_precision(jnp.float32, "default") == jax.lax.Precision.DEFAULT
    case = _no_key_case(12)
    (q, k, v), kw = _inputs(case)
    for fn, tiles in ((flash_attention, TILES), (decode_attention, DECODE_TILES)):
        exact = fn(q, k, v, **kw, context=2, block_sizes=tiles)
        tf32 = fn(q, k, v, **kw, context=2, block_sizes=tiles, precision=jax.lax.Precision.DEFAULT)
        if jax.default_backend() == "cpu":
            np.testing.assert_array_equal(np.asarray(exact), np.asarray(tf32))
        with pytest.raises(ValueError, match="precision"):
            fn(q, k, v, **kw, context=2, precision="tf32")


# --- kyutai: the kernels inside the Flax Attention layer ------------------------------------------------------------


@settings(max_examples=LAYER_EXAMPLES)
@given(
    case=cases(
        configs(kyutai=True, flexible=False), zero_offsets=True, modes=("none",), magnitudes=ATTENTION_MAGNITUDES
    )
)
def test_kyutai_attention_with_pallas(case):
    """kyutai's attention (SDPA with its position mask) against the Flax layer running on the prefill kernel."""
    with pytest.MonkeyPatch.context() as mp:
        use_small_tiles(mp, decode=False)
        compare_pair("attention", ("kyutai", "flax[attention=pallas,jit]"), case)


@settings(max_examples=LAYER_EXAMPLES)
@given(case=cases(configs(flexible=False), max_offset=16, modes=("none",), magnitudes=ATTENTION_MAGNITUDES))
def test_cache_steps_with_pallas_decode(case):
    """Step-by-step decoding through the ring cache on the decode kernel equals the full pass of our PyTorch ref."""
    with pytest.MonkeyPatch.context() as mp:
        use_small_tiles(mp)
        impl = "flax[attention=pallas,cached,jit]"
        compare_pair("attention", ("ref", impl), case, judged_as=attention_component(impl, case.dtype))


# --- negative controls ----------------------------------------------------------------------------------------------


def _skipping_block_1(attend_block):
    def step(j, carry, **kw):
        return jax.lax.cond(j == 1, lambda c: c, functools.partial(attend_block, j, **kw), carry)

    return step


def _one_block_short(live_block_ranges):
    def ranges(*args, **kw):
        ranges = live_block_ranges(*args, **kw)
        return ranges.at[..., 1].set(jnp.maximum(ranges[..., 1] - 1, ranges[..., 0]))

    return ranges


def _skipping_step_1(attends):
    return lambda j, lo, hi: attends(j, lo, hi) & (j != 1)


# name -> [(a module-level function of the kernel modules that the bug replaces, the bug made from the original)]
CONTROLS = {
    "mask_off_by_one": [("visible", lambda visible: lambda q_pos, k_pos, ctx: visible(q_pos + 1, k_pos, ctx))],
    "scale_1.0": [("softmax_scale", lambda _: lambda head_dim: 1.0)],
    # the key-block loop step of the Triton kernels, the key-block grid step of the Mosaic one
    "skipped_kv_block": [("attend_block", _skipping_block_1), ("attends", _skipping_step_1)],
    "kv_range_one_short": [("live_block_ranges", _one_block_short)],
}


def _plant(patch: pytest.MonkeyPatch, name: str) -> None:
    """Replaces the function in each kernel module that binds it (decode.py and mosaic.py import shared ones)."""
    jax.clear_caches()  # a kernel trace made before the patch would serve the patched call
    for attribute, bug in CONTROLS[name]:
        for module in (flash_module, decode_module, mosaic_module):
            if hasattr(module, attribute):
                patch.setattr(module, attribute, bug(getattr(module, attribute)))


# The Mosaic source is one kernel for prefill and decode (mosaic.py): its controls plant each bug in that kernel once,
# through the prefill entry point (a multi-block cache, several row blocks).
CONTROL_KERNELS = {
    "prefill": KERNELS["prefill"],
    "decode": KERNELS["decode"],
    "mosaic": functools.partial(_mosaic, "prefill"),
}


@functools.cache
def _control_case(kernel: str, context: int | None) -> tuple[AttentionCase, jax.Array, jax.Array]:
    """A case with a ring-ordered row, its XLA reference and the unpatched kernel's output (arrays, not traces: cached
    across the controls, whose patches drop every trace). Mosaic's key blocks are 128 long: its cache spans three."""
    rng = np.random.default_rng(1)
    length = 3 if kernel == "decode" else 9
    kv_len = 300 if kernel == "mosaic" else 21
    q = rng.standard_normal((2, length, 4, 16)).astype(np.float32)
    k, v = (rng.standard_normal((2, kv_len, 2, 16)).astype(np.float32) for _ in range(2))
    k_pos = np.stack([np.arange(kv_len), np.roll(np.arange(30, 30 + kv_len), 5)])  # row 1: ring order
    q_pos = k_pos.max(axis=1, keepdims=True) - length + 1 + np.arange(length)
    case = AttentionCase("float32", q, k, v, q_pos, k_pos, context)
    return case, _xla(case), CONTROL_KERNELS[kernel](case)


@pytest.mark.parametrize("kernel", sorted(CONTROL_KERNELS))
@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_negative_control(kernel, name, patch):
    """Each planted bug must fail the same comparison the unpatched kernel passes on the same case."""
    context = (7 if name == "mask_off_by_one" else None) if kernel != "mosaic" else 200
    case, reference, unpatched = _control_case(kernel, context)
    pair = (XLA, MOSAIC_LABELS["prefill"] if kernel == "mosaic" else KERNEL_LABELS[kernel])
    _compare(reference, unpatched, case, pair)
    _plant(patch, name)
    with pytest.raises(ParityError):
        _compare(reference, CONTROL_KERNELS[kernel](case), case, pair, control=name)


@pytest.mark.parametrize(
    ("shapes", "dtype", "error"),
    [
        (((1, 4, 2, 8), (1, 4, 2, 8)), "float16", TypeError),
        (((1, 4, 3, 8), (1, 4, 2, 8)), "float32", ValueError),  # 3 heads over 2 kv heads
        (((1, 4, 2, 8), (1, 4, 2, 16)), "float32", ValueError),  # head_dim mismatch
        (((4, 2, 8), (1, 4, 2, 8)), "float32", ValueError),  # rank
    ],
)
def test_bad_input(shapes, dtype, error):
    q = jnp.zeros(shapes[0], dtype)
    k = jnp.zeros(shapes[1], dtype)
    pos = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(error):
        flash_attention(q, k, k, q_positions=pos, k_positions=pos, context=None)


def test_unsupported_compiled_head_dim_and_decode_steps():
    q = jnp.zeros((1, 5, 2, 8))
    pos = jnp.zeros((1, 5), jnp.int32)
    with pytest.raises(ValueError, match="head_dim 8"):
        flash_attention(q, q, q, q_positions=pos, k_positions=pos, context=None, interpret=False)
    with pytest.raises(ValueError, match=r"1\.\.4"):
        decode_attention(q, q, q, q_positions=pos, k_positions=pos, context=None)
