"""GatingMLP: activation by name, gate/value halves, per-codebook weights; hf -> ref -> flax and kyutai -> hf."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.harness.checks import compare_pair, run_control
from parity.harness.mutants import MUTANTS
from parity.harness.strategies import cases, configs

PAIRS = (("hf", "ref"), ("ref", "flax"), ("hf", "flax"))
MODES = ("none", "int", "0d", "1d")


@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
@given(data=st.data())
def test_parity(pair, data):
    compare_pair("gating_mlp", pair, data.draw(cases(configs(), modes=MODES)))


@given(case=cases(configs(flexible=False, kyutai=True), zero_offsets=True))
def test_kyutai_to_hf(case):
    compare_pair("gating_mlp", ("kyutai", "hf"), case)


@pytest.mark.parametrize("mutant", MUTANTS["gating_mlp"], ids=lambda m: m.name)
def test_negative_control(mutant, monkeypatch):
    run_control(mutant, monkeypatch)
