"""The single comparison entry point of the parity suite.

`assert_parity(reference, candidate, *, component, pair, expected_dtype, ...)` checks, in order:

1. shape: equal, else fail at once (no metrics);
2. dtype: reference and candidate both have `expected_dtype` (no silent upcast or downcast);
3. finiteness: any NaN or Inf in either array fails, even where both hold the same NaN;
4. metrics, in float64, against `parity.harness.policy.tolerance_for(dtype, component, pair class)`, where dtype is
   the dtype the implementations computed in (`compute_dtype`, by default `expected_dtype`) and the pair class comes
   from the adapter table ("ours-ours", "upstream-ours", "upstream-upstream": `parity.harness.adapters.pair_class`):
   elementwise |cand - ref| <= atol * rms(ref) + rtol * |ref|, mean abs diff <= mae * rms(ref), and for logits the mean
   KL divergence over the last axis and the top-k agreement.

Absolute bounds are in units of the reference's RMS (1.0 for an all-zero reference): the suite draws inputs over four
decades of magnitude, and a float32 rounding error is relative to the tensor's scale, while a porting bug (a wrong
eps, a swapped gate, a mask off by one) moves elements by a sizeable fraction of it.

Every call, pass or fail, emits exactly one record (builtin types only, JSON-serializable) through
`reports.records.emit`, before `ParityError` is raised; the record names the policy entry it was judged by.
`check_parity` is the non-raising core.

Max relative diff is reported, not bounded: |cand - ref| / max(|ref|, floor) with floor = REL_FLOOR * rms(ref) (1.0 for
an all-zero reference), so elements that are tiny next to the tensor's scale do not blow the ratio up.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.harness.adapters import pair_class
from parity.harness.arrays import dtype_name, to_numpy
from parity.harness.policy import Tolerance, tolerance_for
from reports import records

REL_FLOOR = 1e-3  # fraction of the reference RMS below which |ref| is floored in the relative diff

# Dtype kinds that convert to float64 without loss of meaning; bfloat16 and float8 (ml_dtypes) have kind "V".
_NON_REAL_KINDS = frozenset("cOSUMm")


class ParityError(AssertionError):
    """A comparison failed; the message names the component, pair, layer and every failed check with numbers.

    Attributes:
        metrics: the metrics, or None when they could not be computed (shape mismatch, non-finite values).
        failures: one string per failed check.
    """

    def __init__(self, message: str, *, metrics: Metrics | None, failures: list[str]) -> None:
        super().__init__(message)
        self.metrics = metrics
        self.failures = failures


@dataclass(frozen=True)
class Metrics:
    """Differences between a reference and a candidate, computed in float64.

    Attributes:
        max_abs: max |cand - ref|.
        max_abs_index: index of max_abs (first occurrence).
        mae: mean |cand - ref|.
        max_rel: max |cand - ref| / max(|ref|, REL_FLOOR * rms(ref)).
        kl: logits only: mean over positions of KL(softmax(ref) || softmax(cand)) along the last axis.
        topk_agreement: logits only: fraction of positions whose top-k index sets agree.
        worst_excess: max over elements of |cand - ref| - (atol * rms(ref) + rtol * |ref|); > 0: the check fails.
        worst_index: index of worst_excess (first occurrence).
        n_exceed: number of elements with a positive excess.
    """

    max_abs: float
    max_abs_index: tuple[int, ...]
    mae: float
    max_rel: float
    kl: float | None
    topk_agreement: float | None
    worst_excess: float
    worst_index: tuple[int, ...]
    n_exceed: int
    ref_rms: float  # the scale absolute bounds are expressed in (1.0 for an all-zero reference)


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(flat), shape))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _topk_sets(x: np.ndarray, k: int) -> np.ndarray:
    # Stable sort of -x: ties go to the lower index on both sides, so equal tied logits give equal sets.
    return np.sort(np.argsort(-x, axis=-1, kind="stable")[..., :k], axis=-1)


def _metrics(ref: np.ndarray, cand: np.ndarray, tol: Tolerance, *, logits: bool) -> Metrics:
    r = ref.astype(np.float64)
    c = cand.astype(np.float64)
    diff = np.abs(c - r)
    abs_ref = np.abs(r)
    rms = float(np.sqrt(np.mean(r * r)))
    scale = rms if rms > 0 else 1.0
    floor = REL_FLOOR * scale
    excess = diff - (tol.atol * scale + tol.rtol * abs_ref)
    kl = agreement = None
    if logits:
        log_p, log_q = _log_softmax(r), _log_softmax(c)
        kl = float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))
        assert tol.topk is not None
        agreement = float(np.mean(np.all(_topk_sets(r, tol.topk) == _topk_sets(c, tol.topk), axis=-1)))
    max_abs_flat = int(np.argmax(diff))
    worst_flat = int(np.argmax(excess))
    return Metrics(
        max_abs=float(diff.flat[max_abs_flat]),
        max_abs_index=_index(max_abs_flat, r.shape),
        mae=float(np.mean(diff)),
        max_rel=float(np.max(diff / np.maximum(abs_ref, floor))),
        kl=kl,
        topk_agreement=agreement,
        worst_excess=float(excess.flat[worst_flat]),
        worst_index=_index(worst_flat, r.shape),
        n_exceed=int(np.count_nonzero(excess > 0)),
        ref_rms=scale,
    )


def _nonfinite(name: str, x: np.ndarray) -> str | None:
    if x.dtype.kind not in "fV" or x.size == 0:
        return None  # integers and bools are always finite
    x64 = x.astype(np.float64)
    bad = ~np.isfinite(x64)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return None
    n_nan = int(np.count_nonzero(np.isnan(x64)))
    first = _index(int(np.argmax(bad)), x.shape)
    return f"{name} has {count} non-finite values ({n_nan} NaN, {count - n_nan} Inf) of {x.size}, first at {first}"


def _builtin(x: Any) -> Any:
    """Converts a config/hypothesis payload to builtin, JSON-serializable types."""
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, enum.Enum):
        return _builtin(x.value)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _builtin(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _builtin(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [_builtin(v) for v in x]
    return repr(x)


def _shape(x: Any) -> list[int]:
    return [int(d) for d in (x.shape if hasattr(x, "shape") else x)]


def _emit(record: dict[str, Any]) -> None:
    """Hands a record to the report plugin (outside a test it is kept in `reports.records.UNATTACHED`)."""
    records.emit(record)


def _header(component: str, pair: tuple[str, str], dtype: str, layer: int | None, stage: str | None) -> str:
    where = "".join([f" layer {layer}" if layer is not None else "", f" ({stage})" if stage is not None else ""])
    return f"{component} [{pair[0]} -> {pair[1]}, {pair_class(*pair)}] {dtype}{where}"


def check_parity(
    reference: Any,
    candidate: Any,
    *,
    component: str,
    pair: tuple[str, str],
    expected_dtype: str,
    layer: int | None = None,
    layer_name: str | None = None,
    stage: str | None = None,
    config: dict | None = None,
    inputs: dict[str, tuple[int, ...]] | None = None,
    logits: bool = False,
    control: str | None = None,
    hypothesis: dict | None = None,
    expected_divergence: str | None = None,
    compute_dtype: str | None = None,
) -> tuple[bool, Metrics | None, list[str]]:
    """Compares `candidate` against `reference` and emits one record; never raises on a parity failure.

    Args:
        reference: output of the reference implementation (torch tensor, jax array or numpy array).
        candidate: output of the implementation under test, same shape.
        component: policy component name ("attention", "rmsnorm", ...).
        pair: (reference implementation, candidate implementation), e.g. ("hf", "flax[attention=pallas]"): names
            registered in the adapter table, which decide the pair class.
        expected_dtype: dtype name both outputs must have; also the policy's dtype key.
        layer: layer index, for per-layer comparisons.
        layer_name: what that index is, for the report's axis ("embedding", "temporal 3", "depth 1").
        stage: "teacher_forced" or "propagated", for whole-model drift comparisons.
        config: the config the implementations were built from (recorded).
        inputs: input names -> shapes (recorded; arrays are accepted and their shapes taken).
        logits: also check KL divergence and top-k agreement over the last axis; requires a logits tolerance.
        control: name of the negative control this comparison is, if any (recorded).
        hypothesis: hypothesis reproduction data (recorded).
        expected_divergence: reason this is a documented upstream disagreement; a failure is then recorded with
            verdict "expected_divergence" instead of "fail".
        compute_dtype: the dtype the implementations computed in, when it differs from `expected_dtype` (a float32
            loss of a bfloat16 model); the policy entry is looked up by it.

    Returns:
        (passed, metrics or None when they could not be computed, one string per failed check).

    Raises:
        KeyError: no policy entry for (dtype, component, pair class), or a pair name the adapter table lacks.
        ValueError/TypeError: malformed arguments (pair, logits without logits tolerance, ...); no record is emitted.
    """
    pair, key, tol, ref, cand, metrics, failures = _judge(reference, candidate, component=component, pair=pair,
                                                          expected_dtype=expected_dtype, logits=logits,
                                                          compute_dtype=compute_dtype)  # fmt: skip
    passed = not failures
    verdict = "pass" if passed else ("expected_divergence" if expected_divergence is not None else "fail")
    _emit(
        {
            "component": component,
            "pair": {"reference": pair[0], "candidate": pair[1]},
            "layer": None if layer is None else int(layer),
            "layer_name": layer_name,
            "stage": stage,
            "config": _builtin(config),
            "inputs": None if inputs is None else {str(k): _shape(v) for k, v in inputs.items()},
            "shapes": {"reference": _shape(ref), "candidate": _shape(cand)},
            "dtypes": {"reference": dtype_name(ref), "candidate": dtype_name(cand), "expected": expected_dtype},
            "metrics": None if metrics is None else _builtin(metrics),
            "tolerance": {**_builtin(tol), "key": list(key)},
            "pair_class": key[2],
            "verdict": verdict,
            "control": control,
            "hypothesis": _builtin(hypothesis),
            "expected_divergence": expected_divergence,
            "failures": list(failures),
        }
    )
    return passed, metrics, failures


def judge(
    reference: Any,
    candidate: Any,
    *,
    component: str,
    pair: tuple[str, str],
    expected_dtype: str,
    logits: bool = False,
    compute_dtype: str | None = None,
) -> tuple[bool, Metrics | None, list[str]]:
    """`check_parity`'s verdict without its record: for a diagnostic inside a failure message (the logits a wrong
    token was drawn from), which is not a comparison of its own and must not count as one in the report."""
    *_, metrics, failures = _judge(reference, candidate, component=component, pair=pair, expected_dtype=expected_dtype,
                                   logits=logits, compute_dtype=compute_dtype)  # fmt: skip
    return not failures, metrics, failures


def _judge(reference, candidate, *, component, pair, expected_dtype, logits, compute_dtype):
    """(pair, policy key, tolerance, reference and candidate as numpy, metrics, failures) of one comparison."""
    if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
        raise ValueError(f"pair must be (reference name, candidate name), got {pair!r}")
    pair = (pair[0], pair[1])
    key = (compute_dtype or expected_dtype, component, pair_class(*pair))
    tol = tolerance_for(*key)
    if logits != tol.is_logits:
        raise ValueError(
            f"logits={logits} but the tolerance for {key} "
            f"{'bounds' if tol.is_logits else 'does not bound'} KL/top-k; they must agree"
        )
    ref, cand = to_numpy(reference), to_numpy(candidate)
    if logits and ref.shape == cand.shape and (ref.ndim == 0 or ref.shape[-1] < (tol.topk or 0)):
        raise ValueError(f"logits need a last axis of at least topk={tol.topk} entries, got shape {ref.shape}")

    failures: list[str] = []
    metrics: Metrics | None = None
    if ref.shape != cand.shape:
        failures.append(f"shape: reference {ref.shape} != candidate {cand.shape}")
    else:
        for name, arr in (("reference", ref), ("candidate", cand)):
            if dtype_name(arr) != expected_dtype:
                failures.append(f"dtype: {name} {dtype_name(arr)} != expected {expected_dtype}")
        nonfinite = [msg for msg in (_nonfinite("candidate", cand), _nonfinite("reference", ref)) if msg]
        failures.extend(nonfinite)
        if ref.size == 0:
            failures.append(f"empty: shape {ref.shape} has no elements to compare")
        elif not nonfinite and ref.dtype.kind not in _NON_REAL_KINDS and cand.dtype.kind not in _NON_REAL_KINDS:
            # Metrics are computed even after a dtype failure: they show whether the values agree regardless.
            metrics = _metrics(ref, cand, tol, logits=logits)
            failures.extend(_metric_failures(metrics, ref, cand, tol))

    return pair, key, tol, ref, cand, metrics, failures


def _metric_failures(m: Metrics, ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> list[str]:
    failures = []
    if m.n_exceed:
        r, c = float(ref[m.worst_index]), float(cand[m.worst_index])
        bound = tol.atol * m.ref_rms + tol.rtol * abs(r)
        failures.append(
            f"max_abs {m.max_abs:.2e} at {m.max_abs_index}: {m.n_exceed} of {ref.size} elements exceed "
            f"atol {tol.atol:g}*rms(ref) {m.ref_rms:.3g} + rtol {tol.rtol:g}*|ref|, worst at {m.worst_index} "
            f"|diff| {abs(c - r):.2e} > {bound:.2e} (ref {r:.6g}, cand {c:.6g})"
        )
    if m.mae > tol.mae * m.ref_rms:
        failures.append(f"mae {m.mae:.2e} > {tol.mae:g}*rms(ref) = {tol.mae * m.ref_rms:.2e}")
    if m.kl is not None and tol.kl is not None and m.kl > tol.kl:
        failures.append(f"kl {m.kl:.2e} > {tol.kl:g}")
    if m.topk_agreement is not None and tol.topk_agreement is not None and m.topk_agreement < tol.topk_agreement:
        failures.append(f"top-{tol.topk} agreement {m.topk_agreement:.4f} < {tol.topk_agreement:g}")
    return failures


def assert_parity(
    reference: Any,
    candidate: Any,
    *,
    component: str,
    pair: tuple[str, str],
    expected_dtype: str,
    layer: int | None = None,
    layer_name: str | None = None,
    stage: str | None = None,
    config: dict | None = None,
    inputs: dict[str, tuple[int, ...]] | None = None,
    logits: bool = False,
    control: str | None = None,
    hypothesis: dict | None = None,
    expected_divergence: str | None = None,
    compute_dtype: str | None = None,
) -> Metrics:
    """Compares `candidate` against `reference`, emits one record, and raises ParityError on failure.

    Arguments are those of `check_parity`. A comparison with `expected_divergence` still raises when it fails (its
    test is marked `xfail(strict=True, raises=ParityError)`), so an upstream fix shows up as an unexpected pass.

    Returns:
        The metrics of a passing comparison.

    Raises:
        ParityError: any check failed; the message names the component, pair, dtype, layer and every failed check.
    """
    passed, metrics, failures = check_parity(
        reference,
        candidate,
        component=component,
        pair=pair,
        expected_dtype=expected_dtype,
        layer=layer,
        layer_name=layer_name,
        stage=stage,
        config=config,
        inputs=inputs,
        logits=logits,
        control=control,
        hypothesis=hypothesis,
        expected_divergence=expected_divergence,
        compute_dtype=compute_dtype,
    )
    if not passed:
        message = f"{_header(component, tuple(pair), expected_dtype, layer, stage)}: {'; '.join(failures)}"
        if expected_divergence is not None:
            message += f" [expected divergence: {expected_divergence}]"
        raise ParityError(message, metrics=metrics, failures=failures)
    assert metrics is not None
    return metrics
