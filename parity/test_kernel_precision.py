"""Precision inside the Pallas kernels, both sources (Triton: flash_attention.py, decode.py; Mosaic: mosaic.py), read
from their jaxprs as parity/test_precision.py reads the model's (issue 17, class 8; issue 12 for the Mosaic source):
scores and p.v accumulate in float32 or at the precision asked for, the online softmax's running max, denominator and
accumulator stay float32 (Triton loop carries, Mosaic VMEM scratch); and numerically, bf16 q/k whose scores bf16 would
round visibly against the jnp `reference_attention`. Each check has a planted bug that it must report.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from models_flax.kernels.decode import DecodeBlockSizes, decode_attention
from models_flax.kernels.flash_attention import BlockSizes, flash_attention, reference_attention
from models_flax.kernels.mosaic import MosaicBlockSizes
from parity.harness.compare import ParityError, assert_parity
from parity.harness.jaxpr_checks import (
    BF16,
    DEFAULT,
    F32,
    Op,
    carries,
    float32_problems,
    floats,
    precision_problems,
    trace,
)


def _assert_reported(problems: list[str], *fragments: str) -> None:
    """A planted bug: some problem must name every fragment (the op, its dtype, its file and function)."""
    assert any(all(f in p for f in fragments) for p in problems), f"no problem names {fragments}: {problems}"


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


# --- what is traced ---------------------------------------------------------------------------------------------------


def kernel_args(dtype, *, length: int, kv_len: int = 21):
    """q (1, length, 4, 16), k/v (1, kv_len, 2, 16) in `dtype`, causal positions ending together."""
    q, kv = _sds((1, length, 4, 16), dtype), _sds((1, kv_len, 2, 16), dtype)
    return (q, kv, kv), dict(q_positions=_sds((1, length), jnp.int32), k_positions=_sds((1, kv_len), jnp.int32))


def kernel_ops(kernel: str, dtype, precision, platform: str = "gpu") -> list[Op]:
    """The ops of one kernel call of one source (Triton: "gpu", Mosaic: "tpu") on small tiles (several key blocks;
    decode split over 3 programs); without a platform the program would hold every platform's branch."""
    if platform == "tpu":
        kernels = {"prefill": flash_attention, "decode": decode_attention}
        fn = functools.partial(kernels[kernel], block_sizes=MosaicBlockSizes(block_q=8, block_k=128), platform="tpu")
        (q, k, v), pos = kernel_args(dtype, length=9 if kernel == "prefill" else 3, kv_len=300)
    elif kernel == "prefill":
        fn = functools.partial(flash_attention, block_sizes=BlockSizes(block_q=8, block_k=8), platform="gpu")
        (q, k, v), pos = kernel_args(dtype, length=9)
    else:
        fn = functools.partial(decode_attention, block_sizes=DecodeBlockSizes(block_k=4, num_splits=3), platform="gpu")
        (q, k, v), pos = kernel_args(dtype, length=3)
    call = lambda q, k, v, qp, kp: fn(q, k, v, q_positions=qp, k_positions=kp, context=7, precision=precision)  # noqa: E731
    return trace(call, q, k, v, pos["q_positions"], pos["k_positions"])


# --- float32 scores and state -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ("gpu", "tpu"))
@pytest.mark.parametrize("kernel", ("prefill", "decode"))
@pytest.mark.parametrize("dtype", (F32, BF16), ids=str)
def test_kernels_keep_float32_scores_and_state(kernel, dtype, platform):
    """The kernel bodies: scores and p.v accumulate in float32 (bf16 operands) or at the precision asked for (fp32);
    the online softmax's running max, denominator and accumulator are float32: loop carries in the Triton source,
    VMEM scratch written across the key grid axis in the Mosaic one."""
    precision = None if dtype == BF16 else DEFAULT
    ops = kernel_ops(kernel, dtype, precision, platform)
    assert precision_problems(ops, precision) == [] and float32_problems(ops) == []
    body = [op for op in ops if "pallas_call" in op.path]
    dots = [op for op in body if op.name == "dot_general"]
    assert len(dots) == 2 and all(floats(op.eqn.outvars) == [F32] for op in dots)
    if platform == "gpu":
        carried = [d for op in body if op.name in ("while", "scan") for d in floats(carries(op.eqn))]
        assert len(carried) >= 4 and set(carried) == {F32}  # (acc, m, den) and the fallback's sum of V
    else:
        (call,) = [op for op in ops if op.name == "pallas_call"]
        scratch = call.eqn.params["jaxpr"].invars[-3:]  # (m, l, acc) after the inputs and the output
        assert [v.aval.dtype for v in scratch] == [F32] * 3 and scratch[-1].aval.shape == (8, 16)


# --- the kernels numerically: scores that need float32 --------------------------------------------------------------


@functools.cache
def _large_scores_case():
    """bf16 q and k sharing a large component (10 + N(0, 1) per dim, head_dim 16): scores of 800 +- 15, which bf16
    rounds by up to 2 (a spacing of 4), so a bf16 score moves a softmax whose logits differ by a few units; v N(0, 1).
    Returns the inputs and the jnp reference (float32 scores) on them."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(10 + rng.standard_normal((1, 8, 4, 16)), BF16)
    k = jnp.asarray(10 + rng.standard_normal((1, 8, 2, 16)), BF16)
    v = jnp.asarray(rng.standard_normal((1, 8, 2, 16)), BF16)
    kw = dict(q_positions=jnp.arange(8, dtype=jnp.int32)[None], k_positions=jnp.arange(8, dtype=jnp.int32)[None])
    return (q, k, v), kw, reference_attention(q, k, v, **kw, context=None)


def _compare_kernel(control: str | None = None):
    (q, k, v), kw, reference = _large_scores_case()
    return assert_parity(
        reference,
        flash_attention(q, k, v, **kw, context=None),
        component="pallas_attention",
        pair=("flax[attention=jnp_reference]", "flax[attention=pallas]"),
        expected_dtype="bfloat16",
        inputs={"q": q.shape, "k": k.shape},
        control=control,
    )


def _bf16_scores(dot_general):
    """The kernels' q.k dot (both operands contracted on their last axis) computed in the operands' bf16."""

    def dot(a, b, dims, *, precision=None, preferred_element_type=None):
        if dims[0] == ((1,), (1,)):
            preferred_element_type = a.dtype
        return dot_general(a, b, dims, precision=precision, preferred_element_type=preferred_element_type)

    return dot


def _bf16_state(fori_loop):
    """The kernels' loops keep their float32 state (running max, denominator, accumulator) in bf16 between steps."""
    narrow = functools.partial(jax.tree.map, lambda x: x.astype(BF16) if x.dtype == F32 else x)
    widen = functools.partial(jax.tree.map, lambda x: x.astype(F32) if x.dtype == BF16 else x)
    return lambda lo, hi, body, init: widen(fori_loop(lo, hi, lambda i, c: narrow(body(i, widen(c))), narrow(init)))


def test_kernel_scores_need_float32(patch):
    """The prefill kernel on bf16 inputs whose scores bf16 would round visibly matches the jnp reference; the same
    kernel computing its scores in bf16 does not, and the structural checks name its score dot."""
    _compare_kernel()
    patch.setattr(jax.lax, "dot_general", _bf16_scores(jax.lax.dot_general))
    jax.clear_caches()  # the unpatched kernel's trace would serve the patched call
    with pytest.raises(ParityError):
        _compare_kernel(control="bf16_scores")
    ops = kernel_ops("prefill", BF16, None)
    where = (
        "in kernel online softmax at",
        "flash_attention.py",
        "attend_block",
        "pallas_call(flash_attention_prefill)",
    )
    _assert_reported(float32_problems(ops), "dot_general computes in bfloat16", *where)
    _assert_reported(precision_problems(ops, None), "bfloat16 dot accumulates in bfloat16", *where)


@pytest.mark.parametrize("kernel", ("prefill", "decode"))
def test_kernel_state_in_bf16_is_reported(kernel, patch):
    """Negative control of the loop-carry check: the online softmax's state kept in bf16 between key blocks."""
    patch.setattr(jax.lax, "fori_loop", _bf16_state(jax.lax.fori_loop))
    problems = float32_problems(kernel_ops(kernel, BF16, None))
    name = "flash_attention_prefill" if kernel == "prefill" else "flash_attention_decode"
    _assert_reported(problems, "while carries bfloat16 state", "attend_blocks", f"pallas_call({name})")
    _assert_reported(problems, "carries bfloat16 state", "sum_rows")
