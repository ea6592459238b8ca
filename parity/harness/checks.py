"""Glue shared by the test modules: run one implementation pair on one drawn case and compare through assert_parity."""

from __future__ import annotations

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
) -> Metrics:
    """Builds both implementations with shared weights, runs them on the case and asserts parity (one record).

    mutate: an optional callable(Models) applied after building, for negative controls.
    """
    models = implementations.build(component, case.cfg, case.dtype, impls=pair)
    if mutate is not None:
        mutate(models)
    reference, candidate = (models.run(impl, case.inputs())["y"] for impl in pair)
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
