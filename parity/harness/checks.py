"""Glue shared by the test modules: run one implementation pair on one drawn case and compare through assert_parity."""

from __future__ import annotations

import functools

import numpy as np

from parity.harness import implementations
from parity.harness.compare import Metrics, assert_parity
from parity.harness.strategies import Case

SHORT_OFFSET = 16
"""Largest per-row position offset for comparisons whose two sides compute rope frequencies with different float32
arithmetic: HF (theta^(-2i/D)) against kyutai's exp(-2i log(theta)/D), and torch's exp against XLA's (they differ by
one ulp on 40 of 378 frequencies measured). One ulp of a frequency shifts the angle at position p by ~p * 6e-8, so
past a few dozen positions the float32 bound would measure exp's last bit, not the port. Same-library pairs (kyutai ->
ref) run to position 4096; test_rope's expected divergences measure the cross-library drift at long positions."""


def compare_pair(
    component: str,
    pair: tuple[str, str],
    case: Case,
    *,
    control: str | None = None,
    expected_divergence: str | None = None,
    mutate=None,
    judged_as: str | None = None,
) -> Metrics:
    """Builds both implementations with shared weights, runs them on the case and asserts parity (one record).

    mutate: an optional callable(Models) applied after building, for negative controls.
    judged_as: the policy component the outputs are judged under, when not `component` (`attention_component`).
    """
    models = implementations.build(component, case.cfg, case.dtype, impls=pair)
    if mutate is not None:
        mutate(models)
    reference, candidate = (models.run(impl, case.inputs())["y"] for impl in pair)
    return assert_case_parity(
        reference, candidate, case, component=judged_as or component, pair=pair, control=control,
        expected_divergence=expected_divergence,
    )  # fmt: skip


def assert_case_parity(
    reference,
    candidate,
    case: Case,
    *,
    component: str,
    pair: tuple[str, str],
    control: str | None = None,
    expected_divergence: str | None = None,
) -> Metrics:
    """assert_parity of two outputs computed on `case` (one record, with the case's config, shapes and offsets)."""
    inputs = {"x": tuple(case.x.shape), "positions": tuple(case.positions.shape)}
    return assert_parity(
        reference,
        candidate,
        component=component,
        pair=pair,
        expected_dtype=case.dtype,
        config=case.cfg,
        inputs=inputs,
        control=control,
        hypothesis=case.describe(),
        expected_divergence=expected_divergence,
    )


def attention_component(impl: str, dtype: str) -> str:
    """The policy component of an attention layer's output: "attention", except on the Pallas kernels in bfloat16,
    "pallas_attention": their online softmax rounds probabilities to bfloat16 against the running max, not the final
    one, so they differ from the XLA path (and ref) by more than two bf16 roundings (layer output vs ref's, 2 rows x 24
    positions, context 8: max|d|/rms 2.8e-2, mae/rms 2.0e-3 at offset 0 and at ~4000 alike; the kernels against XLA
    measured 3.4e-2 / 1.7e-3). In float32 both meet the layer's own bound (measured 1.5e-6)."""
    return "pallas_attention" if dtype == "bfloat16" and "attention=pallas" in impl else "attention"


def run_control(mutant, monkeypatch) -> None:
    """Plants the mutant's bug and asserts that the comparison fails (the record names the control)."""
    import pytest

    from parity.harness.compare import ParityError

    if mutant.patch is not None:
        mutant.patch(monkeypatch)
    with pytest.raises(ParityError) as failed:
        compare_pair(mutant.component, mutant.pair, mutant.case(), control=mutant.name, mutate=mutant.edit)
    before, m = mutant.passed_before, failed.value.metrics
    if before is not None:  # the bound this bug used to meet must still let it through: the new one is what catches it
        assert m is not None and m.max_abs <= before.atol * m.ref_rms and m.mae <= before.mae * m.ref_rms, (
            f"{mutant.name}: max|d|/rms {m.max_abs / m.ref_rms:.3g}, mae/rms {m.mae / m.ref_rms:.3g} exceed {before}"
        )


class CaseRuns:
    """Several implementations of one component built once with shared weights and run on one fixed case, for tests
    that compare many paths on the same input: unpatched outputs are kept (`output`), a negative control reruns one
    path under its patch (`run`) and compares it with the kept reference.

    Args:
        component: the layer component.
        case: the input (its config and dtype build the implementations).
        impls: implementation labels; the first is the reference of `compare`.
    """

    def __init__(self, component: str, case: Case, impls: tuple[str, ...]):
        self.component, self.case, self.impls = component, case, impls
        self._outputs: dict[str, np.ndarray] = {}

    @functools.cached_property
    def models(self) -> implementations.Models:
        return implementations.build(self.component, self.case.cfg, self.case.dtype, impls=self.impls)

    def run(self, impl: str) -> np.ndarray:
        """A fresh run of `impl` (under whatever is patched now)."""
        return self.models.run(impl, self.case.inputs())["y"]

    def output(self, impl: str) -> np.ndarray:
        """The first output of `impl`, kept (unpatched: ask for it before planting a bug)."""
        if impl not in self._outputs:
            self._outputs[impl] = self.run(impl)
        return self._outputs[impl]

    def compare(self, impl: str, candidate: np.ndarray | None = None, *, control: str | None = None) -> Metrics:
        """`impl`'s output (or `candidate`, a patched run of it) against the reference's, one record; the component
        of attention paths is `attention_component`'s."""
        component = attention_component(impl, self.case.dtype) if self.component == "attention" else self.component
        out = self.output(impl) if candidate is None else candidate
        return assert_case_parity(self.output(self.impls[0]), out, self.case, component=component,
                                  pair=(self.impls[0], impl), control=control)  # fmt: skip
