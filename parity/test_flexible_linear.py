"""FlexibleLinear over every layer_idx mode: None, Python int, 0-d, 1-D per token, and the S == 1 broadcast."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.harness.checks import compare_pair, run_control
from parity.harness.mutants import MUTANTS
from parity.harness.strategies import LAYER_IDX_MODES, cases, configs

PAIRS = (("hf", "ref"), ("ref", "flax"), ("hf", "flax"))


@pytest.mark.parametrize("mode", LAYER_IDX_MODES)
@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
@given(data=st.data())
def test_parity(pair, mode, data):
    compare_pair("flexible_linear", pair, data.draw(cases(configs(flexible=True), modes=(mode,))))


@pytest.mark.parametrize("mutant", MUTANTS["flexible_linear"], ids=lambda m: m.name)
def test_negative_control(mutant, monkeypatch):
    run_control(mutant, monkeypatch)
