"""Unit tests for the comparison entry point, the tolerance table and array conversion."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

import reports.records
from parity.harness import compare, policy
from parity.harness.arrays import dtype_name, to_numpy
from parity.harness.compare import ParityError, assert_parity, check_parity
from parity.harness.policy import Tolerance, tolerance_for

PAIR = ("hf", "flax")


@pytest.fixture
def records(monkeypatch):
    """Collects emitted records where compare hands them over (reports.records.emit), instead of the plugin."""
    collected = []
    monkeypatch.setattr(reports.records, "emit", collected.append)
    return collected


@pytest.fixture
def logits_tolerance(monkeypatch):
    tol = Tolerance(atol=1.0, rtol=0.0, mae=1.0, kl=1e-3, topk=2, topk_agreement=1.0, why="unit test")
    monkeypatch.setitem(policy.POLICY, ("float32", "test_logits", "upstream-ours"), tol)
    return tol


def _x(shape=(2, 3, 4), seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _only(records):
    assert len(records) == 1, records
    json.dumps(records[0], allow_nan=False)  # builtin types only, strict JSON
    return records[0]


# --- passing and failing on values ---


def test_identical_arrays_pass(records):
    x = _x()
    metrics = assert_parity(x, x.copy(), component="attention", pair=PAIR, expected_dtype="float32", layer=2)
    assert metrics.max_abs == 0.0 and metrics.mae == 0.0 and metrics.n_exceed == 0
    record = _only(records)
    assert record["verdict"] == "pass" and record["failures"] == [] and record["layer"] == 2


def test_perturbation_fails_in_fp32_at_the_perturbed_index(records):
    ref = _x()
    cand = ref.copy()
    cand[1, 2, 3] += 1e-3
    with pytest.raises(ParityError) as info:
        assert_parity(ref, cand, component="rmsnorm", pair=PAIR, expected_dtype="float32")
    err = info.value
    assert err.metrics.max_abs_index == (1, 2, 3) and err.metrics.worst_index == (1, 2, 3)
    assert err.metrics.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert err.metrics.n_exceed == 1
    assert "(1, 2, 3)" in str(err)
    record = _only(records)
    assert record["verdict"] == "fail"
    assert record["metrics"]["max_abs_index"] == [1, 2, 3]
    assert all(type(i) is int for i in record["metrics"]["max_abs_index"])


def test_message_names_component_pair_layer_and_checks(records):
    ref = _x()
    with pytest.raises(ParityError) as info:
        assert_parity(ref, ref + 0.1, component="attention", pair=("kyutai", "ref"), expected_dtype="float32", layer=3)
    message = str(info.value)
    assert message.startswith("attention [kyutai -> ref, upstream-ours] float32 layer 3: ")
    assert "*rms(ref)" in message and "*|ref|" in message and "mae 1.00e-01 > " in message
    assert len(info.value.failures) == 2


def test_shape_mismatch_fails_without_metrics(records):
    with pytest.raises(ParityError, match=r"shape: reference \(2, 3\) != candidate \(3, 2\)") as info:
        assert_parity(_x((2, 3)), _x((3, 2)), component="rope", pair=PAIR, expected_dtype="float32")
    assert info.value.metrics is None
    record = _only(records)
    assert record["metrics"] is None and record["shapes"] == {"reference": [2, 3], "candidate": [3, 2]}


def test_empty_arrays_fail(records):
    with pytest.raises(ParityError, match="no elements"):
        assert_parity(_x((0, 3)), _x((0, 3)), component="rope", pair=PAIR, expected_dtype="float32")
    _only(records)


# --- dtype ---


def test_float32_where_bfloat16_expected_fails(records):
    x = _x()
    with pytest.raises(ParityError, match="dtype: candidate float32 != expected bfloat16"):
        assert_parity(x.astype(ml_dtypes.bfloat16), x, component="attention", pair=PAIR, expected_dtype="bfloat16")
    assert _only(records)["dtypes"] == {"reference": "bfloat16", "candidate": "float32", "expected": "bfloat16"}


def test_bfloat16_where_float32_expected_fails(records):
    x = _x()
    with pytest.raises(ParityError, match="dtype: candidate bfloat16 != expected float32"):
        assert_parity(x, x.astype(ml_dtypes.bfloat16), component="attention", pair=PAIR, expected_dtype="float32")
    _only(records)


def test_float64_candidate_fails(records):
    x = _x()
    with pytest.raises(ParityError, match="dtype: candidate float64 != expected float32") as info:
        assert_parity(x, x.astype(np.float64), component="attention", pair=PAIR, expected_dtype="float32")
    assert info.value.metrics.max_abs == 0.0  # values agree; only the dtype is wrong
    _only(records)


def test_reference_dtype_is_checked_too(records):
    x = _x()
    with pytest.raises(ParityError, match="dtype: reference float64 != expected float32"):
        assert_parity(x.astype(np.float64), x, component="attention", pair=PAIR, expected_dtype="float32")
    _only(records)


# --- finiteness ---


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_fails_even_when_reference_matches(records, bad):
    ref = _x()
    ref[0, 1, 2] = bad
    cand = ref.copy()
    with pytest.raises(ParityError) as info:
        assert_parity(ref, cand, component="gating_mlp", pair=PAIR, expected_dtype="float32")
    message = str(info.value)
    assert "candidate has 1 non-finite values" in message and "first at (0, 1, 2)" in message
    assert "reference has 1 non-finite values" in message
    assert info.value.metrics is None
    _only(records)


def test_nonfinite_bfloat16_candidate_fails(records):
    ref = _x().astype(ml_dtypes.bfloat16)
    cand = ref.copy()
    cand[1, 0, 0] = np.nan
    cand[1, 2, 0] = np.inf
    with pytest.raises(ParityError, match=r"candidate has 2 non-finite values \(1 NaN, 1 Inf\) of 24, first at"):
        assert_parity(ref, cand, component="gating_mlp", pair=PAIR, expected_dtype="bfloat16")
    _only(records)


# --- logits ---


def _log_softmax_row(row):
    m = max(row)
    log_z = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - log_z for v in row]


def test_logits_kl_and_topk_match_hand_computation(records, logits_tolerance):
    ref = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=np.float32)
    # Row 0 keeps its top-2 set {1, 2}; row 1 changes it from {0, 2} to {1, 2}.
    cand = np.array([[1.1, 2.0, 2.9], [-1.0, 0.5, 2.0]], dtype=np.float32)
    kls = []
    for r_row, c_row in zip(ref.tolist(), cand.tolist(), strict=True):
        lp, lq = _log_softmax_row(r_row), _log_softmax_row(c_row)
        kls.append(sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True)))
    expected_kl = sum(kls) / len(kls)

    passed, metrics, failures = check_parity(
        ref, cand, component="test_logits", pair=PAIR, expected_dtype="float32", logits=True
    )
    assert metrics.kl == pytest.approx(expected_kl, rel=1e-9)
    assert metrics.topk_agreement == 0.5
    assert not passed
    assert any(f.startswith("top-2 agreement 0.5000 < 1") for f in failures)
    assert any(f.startswith("kl ") for f in failures)  # expected_kl is ~0.18, well above 1e-3
    assert _only(records)["metrics"]["kl"] == pytest.approx(expected_kl, rel=1e-9)


def test_logits_identical_pass(records, logits_tolerance):
    x = _x((2, 5, 7))
    metrics = assert_parity(x, x, component="test_logits", pair=PAIR, expected_dtype="float32", logits=True)
    assert metrics.kl == 0.0 and metrics.topk_agreement == 1.0


def test_logits_flag_must_match_tolerance(records, logits_tolerance):
    x = _x()
    with pytest.raises(ValueError, match="logits=True"):
        check_parity(x, x, component="attention", pair=PAIR, expected_dtype="float32", logits=True)
    with pytest.raises(ValueError, match="logits=False"):
        check_parity(x, x, component="test_logits", pair=PAIR, expected_dtype="float32")
    assert records == []


# --- records ---


def test_record_contents(records):
    x = _x()
    assert_parity(
        x,
        x,
        component="decoder_layer",
        pair=("hf", "ref"),
        expected_dtype="float32",
        layer=np.int64(1),
        layer_name="temporal 0",
        stage="teacher_forced",
        config={"dim": np.int64(16), "theta": 10000.0, "delays": (0, 1, 1)},
        inputs={"x": (2, 3, 4), "positions": np.zeros((2, 3), np.int32)},
        control=None,
        hypothesis={"blob": "AXicY2BgAAAABQAB"},
    )
    record = _only(records)
    assert set(record) == {
        "component",
        "pair",
        "pair_class",
        "layer",
        "layer_name",
        "stage",
        "config",
        "inputs",
        "shapes",
        "dtypes",
        "metrics",
        "tolerance",
        "verdict",
        "control",
        "hypothesis",
        "expected_divergence",
        "failures",
    }
    assert record["pair"] == {"reference": "hf", "candidate": "ref"}
    assert record["layer"] == 1 and type(record["layer"]) is int and record["layer_name"] == "temporal 0"
    assert record["config"] == {"dim": 16, "theta": 10000.0, "delays": [0, 1, 1]}
    assert record["inputs"] == {"x": [2, 3, 4], "positions": [2, 3]}
    assert record["tolerance"]["why"] == tolerance_for("float32", "decoder_layer", "upstream-ours").why
    assert set(record["metrics"]) == {f.name for f in compare.dataclasses.fields(compare.Metrics)}


def test_one_record_per_call_pass_or_fail(records):
    x = _x()
    assert_parity(x, x, component="rope", pair=PAIR, expected_dtype="float32")
    with pytest.raises(ParityError):
        assert_parity(x, x + 1, component="rope", pair=PAIR, expected_dtype="float32")
    check_parity(x, x + 1, component="rope", pair=PAIR, expected_dtype="float32")
    assert [r["verdict"] for r in records] == ["pass", "fail", "fail"]
    json.dumps(records, allow_nan=False)


def test_record_emitted_before_raise(monkeypatch):
    seen = []

    def emit(record):
        seen.append(record)

    monkeypatch.setattr(compare, "_emit", emit)
    with pytest.raises(ParityError):
        try:
            assert_parity(_x(), _x(seed=1), component="rope", pair=PAIR, expected_dtype="float32")
        finally:
            assert len(seen) == 1


def test_negative_control_is_recorded(records):
    x = _x()
    with pytest.raises(ParityError):
        assert_parity(x, -x, component="rope", pair=PAIR, expected_dtype="float32", control="rope_wrong_sign")
    record = _only(records)
    assert record["control"] == "rope_wrong_sign" and record["verdict"] == "fail"


def test_expected_divergence_failing_is_recorded_and_still_raises(records):
    x = _x()
    with pytest.raises(ParityError, match=r"\[expected divergence: upstream uses eps 1e-8\]"):
        assert_parity(
            x, x + 1, component="rmsnorm", pair=("hf", "kyutai"), expected_dtype="float32",
            expected_divergence="upstream uses eps 1e-8",
        )  # fmt: skip
    record = _only(records)
    assert record["verdict"] == "expected_divergence"
    assert record["expected_divergence"] == "upstream uses eps 1e-8"


def test_expected_divergence_passing_is_a_pass(records):
    x = _x()
    assert_parity(x, x, component="rmsnorm", pair=PAIR, expected_dtype="float32", expected_divergence="reason")
    assert _only(records)["verdict"] == "pass"


def test_unknown_policy_key_raises_before_recording(records):
    x = _x()
    with pytest.raises(KeyError, match=r"known keys: .*\('float32', 'attention', 'upstream-ours'\)"):
        assert_parity(x, x, component="atention", pair=PAIR, expected_dtype="float32")
    with pytest.raises(KeyError, match=r"unknown implementation 'flx'; registered: \[.*'flax'"):
        assert_parity(x, x, component="attention", pair=("hf", "flx"), expected_dtype="float32")
    assert records == []


def test_record_names_the_pair_class_and_policy_entry(records):
    x = _x()
    assert_parity(x, x, component="attention", pair=("ref", "flax[attention=pallas]"), expected_dtype="float32")
    assert_parity(x, x, component="attention", pair=("kyutai", "hf"), expected_dtype="float32")
    first, second = records
    assert first["pair_class"] == "ours-ours" and first["tolerance"]["key"] == ["float32", "attention", "ours-ours"]
    assert second["pair_class"] == "upstream-upstream"
    assert first["tolerance"]["why"] == tolerance_for("float32", "attention", "ours-ours").why


def test_compute_dtype_picks_the_policy_entry(records):
    x = _x((1,))
    assert_parity(x, x, component="lm_loss", pair=("ref", "flax"), expected_dtype="float32", compute_dtype="bfloat16")
    record = _only(records)
    assert record["tolerance"]["key"] == ["bfloat16", "lm_loss", "ours-ours"]
    assert record["dtypes"]["expected"] == "float32"


def test_bad_pair_raises(records):
    x = _x()
    with pytest.raises(ValueError, match="pair"):
        assert_parity(x, x, component="rope", pair="hf->flax", expected_dtype="float32")


# --- frameworks ---


def test_torch_bfloat16_round_trips_bits():
    values = [1.0, 0.5, -3.140625, 65280.0, 1e-30]
    t = torch.tensor(values, dtype=torch.bfloat16, requires_grad=True)
    a = to_numpy(t)
    assert a.dtype == ml_dtypes.bfloat16 and dtype_name(t) == dtype_name(a) == "bfloat16"
    np.testing.assert_array_equal(a.view(np.int16), t.detach().view(torch.int16).numpy())
    assert to_numpy(torch.tensor(3.0, dtype=torch.bfloat16)).shape == ()


def test_torch_bfloat16_comparison(records):
    x = _x()
    t = torch.from_numpy(x).to(torch.bfloat16)
    assert_parity(t, t.clone(), component="attention", pair=("kyutai", "ref"), expected_dtype="bfloat16")
    with pytest.raises(ParityError, match="dtype: candidate float32 != expected bfloat16"):
        assert_parity(t, t.float(), component="attention", pair=("kyutai", "ref"), expected_dtype="bfloat16")
    assert [r["verdict"] for r in records] == ["pass", "fail"]


def test_jax_bfloat16_against_torch_bfloat16(records):
    x = _x()
    j = jnp.asarray(x, dtype=jnp.bfloat16)
    t = torch.from_numpy(x).to(torch.bfloat16)
    assert to_numpy(j).dtype == ml_dtypes.bfloat16 and dtype_name(j) == "bfloat16"
    metrics = assert_parity(t, j, component="attention", pair=("ref", "flax"), expected_dtype="bfloat16")
    assert metrics.max_abs == 0.0  # both round-to-nearest-even from the same float32 values
    assert _only(records)["dtypes"]["candidate"] == "bfloat16"


def test_bfloat16_tolerance_applies_to_bfloat16(records):
    x = _x().astype(ml_dtypes.bfloat16)
    one_ulp = x.copy()
    one_ulp.view(np.int16)[0, 0, 0] += 1  # one bf16 ulp on one element
    assert 0 < np.abs(one_ulp.astype(np.float32) - x.astype(np.float32)).max() < 2e-2
    assert_parity(x, one_ulp, component="attention", pair=PAIR, expected_dtype="bfloat16")
    with pytest.raises(ParityError):
        assert_parity(x, (x.astype(np.float32) + 0.5).astype(ml_dtypes.bfloat16), component="attention",
                      pair=PAIR, expected_dtype="bfloat16")  # fmt: skip


@pytest.mark.parametrize(
    ("x", "name"),
    [
        (np.zeros(2, np.float32), "float32"),
        (np.zeros(2, np.float16), "float16"),
        (np.zeros(2, np.int32), "int32"),
        (np.zeros(2, bool), "bool"),
        (torch.zeros(2, dtype=torch.float16), "float16"),
        (torch.zeros(2, dtype=torch.int64), "int64"),
        (jnp.zeros(2, jnp.int32), "int32"),
        (torch.bfloat16, "bfloat16"),
        (np.float32, "float32"),
        (jnp.bfloat16, "bfloat16"),
        ("bfloat16", "bfloat16"),
    ],
)
def test_dtype_name(x, name):
    assert dtype_name(x) == name


def test_to_numpy_keeps_dtype():
    assert to_numpy(torch.zeros(2, dtype=torch.float16)).dtype == np.float16
    assert to_numpy(jnp.zeros(2, jnp.float32)).dtype == np.float32
    assert to_numpy(np.zeros(2, np.float64)).dtype == np.float64


def test_to_numpy_refuses_python_values():
    with pytest.raises(TypeError, match="would pick a dtype"):
        to_numpy([1.0, 2.0])


def test_modules_import_neither_torch_nor_jax():
    code = (
        "import sys, parity.harness.compare, parity.harness.policy, parity.harness.arrays;"
        "bad = [m for m in ('torch', 'jax') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(compare.__file__).rsplit("/parity/", 1)[0])


# --- policy ---


def test_unknown_policy_key_lists_known_keys():
    with pytest.raises(KeyError) as info:
        tolerance_for("float16", "attention", "ours-ours")
    message = str(info.value)
    assert "no tolerance for dtype 'float16', component 'attention', pair class 'ours-ours'" in message
    for key in policy.POLICY:
        assert repr(key) in message


def test_policy_covers_every_layer_pair_class():
    for dtype in ("float32", "bfloat16"):
        for component in ("flexible_linear", "rmsnorm", "gating_mlp", "rope", "attention", "decoder_layer"):
            for klass in ("ours-ours", "upstream-ours"):
                assert tolerance_for(dtype, component, klass).why


def test_ours_ours_bf16_bounds_are_tighter_than_upstream_ones():
    """Where our two implementations agree to the bit, their bound says so: it is never the upstream's."""
    for (dtype, component, klass), tol in policy.POLICY.items():
        upstream = policy.POLICY.get((dtype, component, "upstream-ours"))
        if dtype == "bfloat16" and klass == "ours-ours" and upstream is not None:
            assert tol.atol <= upstream.atol and tol.mae <= upstream.mae, (component, tol, upstream)


def test_tolerance_validates():
    with pytest.raises(ValueError, match="go together"):
        Tolerance(atol=0, rtol=0, mae=0, kl=1e-3)
    with pytest.raises(ValueError, match="atol"):
        Tolerance(atol=-1, rtol=0, mae=0)
