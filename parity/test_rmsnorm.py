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
