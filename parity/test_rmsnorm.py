"""RMSNorm: hf -> ref -> flax and kyutai -> hf, fp32 and bf16, input magnitudes where eps matters."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.harness.checks import compare_pair, run_control
from parity.harness.mutants import MUTANTS
from parity.harness.strategies import cases, configs

PAIRS = (("hf", "ref"), ("ref", "flax"), ("hf", "flax"))


@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
@given(data=st.data())
def test_parity(pair, data):
    compare_pair("rmsnorm", pair, data.draw(cases(configs(flexible=False))))


@given(case=cases(configs(flexible=False, kyutai=True), zero_offsets=True))
def test_kyutai_to_hf(case):
    compare_pair("rmsnorm", ("kyutai", "hf"), case)


@pytest.mark.parametrize("mutant", MUTANTS["rmsnorm"], ids=lambda m: m.name)
def test_negative_control(mutant, monkeypatch):
    run_control(mutant, monkeypatch)


def _bf16_rms_norms(rows: int):
    """kyutai's `rms_norm` (bf16 math) and flax's port on `rows` rows of bf16 input, same unit weights: (kyutai's
    output, flax's), float32 numpy."""
    import jax.numpy as jnp
    import numpy as np
    import torch
    from moshi.modules.transformer import RMSNorm as KyutaiRMSNorm

    from models_flax.norm import RMSNorm

    x = (1e-3 * np.random.default_rng(0).standard_normal((1, rows, 16))).astype(np.float32)  # var near eps
    kyutai = KyutaiRMSNorm(16, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        expected = kyutai(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    flax = RMSNorm(16, eps=1e-5, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, upcast=False)
    return expected, np.asarray(flax(jnp.asarray(x, jnp.bfloat16)).astype(jnp.float32))


def test_bf16_rms_norm_matches_kyutai_where_torch_rounds_rsqrt():
    """With 32 rows torch's bf16 rsqrt runs its vectorized path, correctly rounded: kyutai's rms_norm in bf16 and the
    port are bit-identical."""
    from parity.harness.compare import assert_parity

    expected, got = _bf16_rms_norms(32)
    assert_parity(expected, got, component="rmsnorm_exact", pair=("kyutai", "flax"), expected_dtype="float32")


@pytest.mark.xfail(raises=AssertionError, strict=True, reason="torch's CPU bf16 rsqrt tail: 1 / bf16(sqrt(x))")
def test_expected_divergence_torch_bf16_rsqrt_tail():
    """torch's CPU bf16 rsqrt is correctly rounded in full vectors of 32 and computes 1 / bf16(sqrt(x)) in the tail
    (measured: 30% of 4096 random variances one ulp off when taken 1 to 31 at a time, none 32 at a time). kyutai's
    rms_norm (bf16 math) takes rsqrt of (B, T, 1) variances, so B * T mod 32 of its rows are normalized one ulp off
    the correctly rounded value the port computes (on GPU torch uses another kernel again). This is why decoder
    layers with kyutai's rms_norm in bf16 are judged by their own policy row (`decoder_layer[rms_norm]`)."""
    import numpy as np

    expected, got = _bf16_rms_norms(2)
    assert np.array_equal(expected, got)
