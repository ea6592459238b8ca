"""bf16 against a float32 oracle (issue 17, class 1): every bf16 implementation of rmsnorm, rope, gating_mlp,
attention, the decoder layer and the tiny LM (each temporal layer's output, text and audio logits) is measured against
kyutai in float32 on the same bf16-rounded weights and bf16-representable inputs, below and past the context window
(parity/harness/oracle.py). Each port (ref, flax, flax[attention=pallas]) must stay within `policy.BF16_ORACLE` of the
best upstream's own bf16 error (kyutai, and HF where it runs).

The bf16-vs-bf16 comparisons elsewhere bound a port by upstream's bf16 noise (a quarter of an rms for HF's attention),
and ref <-> flax by two roundings per element: a bug that adds one more rounding at an unlucky place, or puts one
float32 island of upstream in bf16, passes both. The negative controls below plant such bugs in flax and show that
this test fails them while those bounds, on the same run, do not.
"""

from functools import cache

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

import models_flax.attention
import models_flax.norm
import models_ref.norm
from parity.harness import adapters
from parity.harness.compare import judge
from parity.harness.oracle import CASES, errors_of, measure, oracle_run, violations
from parity.harness.policy import BF16_ORACLE

SEEDS = (0,)


@cache
def _run(name: str, seed: int):
    case = CASES[name]
    return oracle_run(case.component, case.cfg, impls=case.impls, seed=seed)


@cache
def _measured(name: str, seed: int):
    return measure(_run(name, seed), CASES[name], seed)


NIGHTLY = {"lm_short"}  # 14 s on CPU; lm_long (past the window, kyutai as the upstream) stays in the default suite


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.nightly) if n in NIGHTLY else n for n in CASES])
def test_port_within_upstream_bf16_error(name, seed):
    measured, errors = _measured(name, seed)
    key = next(iter(CASES[name].outputs().values()))[0]
    assert measured.oracle[key].dtype == np.float32, f"{name}: the oracle ran in {measured.oracle[key].dtype}"
    for impl, out in measured.runs.items():  # a bf16 run that upcast its output would measure nothing
        assert out[key].dtype == ml_dtypes.bfloat16, f"{name}: {impl} returned {out[key].dtype}"
    failures = violations(errors, BF16_ORACLE)
    assert not failures, f"{CASES[name]} seed {seed}:\n" + "\n".join(failures)


# Negative controls: bf16-only design mistakes planted in BOTH ports (ref and flax are written from one design, so a
# mistake in it lands in both, and ref -> flax cannot see it). Each runs one case (seed 0) with the bug planted,
# reusing the oracle's and the upstreams' cached outputs, must fail the oracle bound, and is shown to pass the suite's
# bf16-vs-bf16 bounds (policy.POLICY: ref -> flax, and every upstream -> ref and -> flax) on the same outputs.


def _norm_rounded_before_weight(monkeypatch):
    """y = bf16(x / rms) * weight, multiplied in bf16: two roundings where kyutai and HF round once."""

    def flax_call(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.weight[...].astype(x.dtype)

    def ref_forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight.to(x.dtype)

    monkeypatch.setattr(models_flax.norm.RMSNorm, "__call__", flax_call)
    monkeypatch.setattr(models_ref.norm.RMSNorm, "forward", ref_forward)


def _rope_cos_sin_in_bf16(monkeypatch):
    """cos and sin of the rope angles rounded to bf16 before the rotation (kyutai keeps them in float32). Only the
    ports run under the patch, so the library functions are replaced where models_*/rope.py read them."""
    for fn in ("cos", "sin"):
        monkeypatch.setattr(jnp, fn, _rounded_jax(getattr(jnp, fn)))
        monkeypatch.setattr(torch, fn, _rounded_torch(getattr(torch, fn)))


def _rounded_jax(fn):
    return lambda x: fn(x).astype(jnp.bfloat16).astype(x.dtype)


def _rounded_torch(fn):
    return lambda x: fn(x).to(torch.bfloat16).to(x.dtype)


def _softmax_in_bf16(monkeypatch):
    """The attention softmax computed in bf16 (its input rounded, exp and sum in bf16)."""
    jax_softmax, torch_softmax = jax.nn.softmax, torch.softmax
    monkeypatch.setattr(
        jax.nn, "softmax", lambda x, axis: jax_softmax(x.astype(jnp.bfloat16), axis=axis).astype(x.dtype)
    )
    monkeypatch.setattr(torch, "softmax", lambda x, dim: torch_softmax(x.to(torch.bfloat16), dim=dim).to(x.dtype))


# name -> (plant, case, blind: whether the bf16-vs-bf16 bounds miss it on the same outputs)
CONTROLS = {
    "norm_rounded_before_weight": (_norm_rounded_before_weight, "rmsnorm", True),
    "rope_cos_sin_in_bf16": (_rope_cos_sin_in_bf16, "rope", True),
    # torch's and XLA's bf16 exp differ, so ref -> flax sees this one too
    "softmax_in_bf16": (_softmax_in_bf16, "attention_long", False),
}
PLANTED = ("ref", "flax")


def _bf16_bounds_failures(name: str, measured) -> list[str]:
    """The suite's bf16-vs-bf16 verdicts (policy.POLICY) on the ports' outputs: ref -> flax, upstream -> each port."""
    case = CASES[name]
    upstreams = [i for i in case.impls if adapters.kind(i) == "upstream"]
    pairs = [("ref", "flax"), *((u, p) for u in upstreams for p in PLANTED)]
    failures = []
    for reference, candidate in pairs:
        for out_name, (key, index, logits) in case.outputs().items():
            if reference == "hf" and key == "hidden":
                continue
            ref, cand = measured.runs[reference][key][index], measured.runs[candidate][key][index]
            component = case.component if case.component != "lm" else ("lm_hidden" if key == "hidden" else key)
            if logits:  # the positions kyutai computes (its delay tail is NaN)
                valid = np.isfinite(measured.oracle[key].astype(np.float64)).all(-1)
                ref, cand = ref[valid], cand[valid]
            ok, _, why = judge(ref, cand, component=component, pair=(reference, candidate), expected_dtype="bfloat16",
                               logits=logits)  # fmt: skip
            if not ok:
                failures.append(f"{out_name} {reference}->{candidate}: {'; '.join(why)}")
    return failures


def planted_run(control: str, patch):
    """The control's case (seed 0) with its bug planted in ref and flax; the oracle and upstreams as measured clean."""
    plant, name, _ = CONTROLS[control]
    clean, _ = _measured(name, 0)
    plant(patch)
    case = CASES[name]
    capture = ("hidden",) if case.component == "lm" else ()
    runs = {impl: _run(name, 0).models.run(impl, case.inputs(0), capture=capture) for impl in PLANTED}
    patch.undo()
    return type(clean)(clean.oracle, {**clean.runs, **runs})


@pytest.mark.parametrize("control", CONTROLS)
def test_negative_control(control, patch):
    _, name, blind = CONTROLS[control]
    measured = planted_run(control, patch)
    caught = violations(errors_of(measured, CASES[name]), BF16_ORACLE, ports=PLANTED)
    assert caught, f"{control}: the oracle bound did not see it ({name})"
    seen_by = _bf16_bounds_failures(name, measured)
    if blind:
        assert not seen_by, f"{control}: the bf16-vs-bf16 bounds catch it too: {seen_by}"
    else:
        assert seen_by, f"{control}: the bf16-vs-bf16 bounds no longer see it: update CONTROLS"
