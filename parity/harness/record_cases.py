"""Synthetic parity records for the report tests: valid records of every kind, written to JSONL files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reports import records
from reports.schema import SCHEMA_VERSION
from reports.validate import validate

PROFILE = "ci"  # the hypothesis profile the synthetic records name
CRASH = "parity/test_rope.py::test_crash (worker gw1)"  # the crashed test of `fixture()`, as views name it


def rec(component: str = "rmsnorm", *, verdict: str = "pass", max_abs: float = 1e-7, **kw: Any) -> dict[str, Any]:
    """A valid record (checked with validate) with max|d|/rms(ref) = max_abs (ref_rms 1); without `pair_class`
    unless given, as records written before that field existed."""
    ref, cand = kw.pop("pair", ("hf", "flax"))
    dtype = kw.pop("dtype", "float32")
    r = {
        "schema": SCHEMA_VERSION,
        "node_id": kw.pop("node_id", f"parity/test_{component}.py::test_parity[{ref}-{cand}-{dtype}]"),
        "component": component,
        "pair": {"reference": ref, "candidate": cand},
        "layer": kw.pop("layer", None),
        "stage": kw.pop("stage", None),
        "control": kw.pop("control", None),
        "verdict": verdict,
        "expected_divergence": kw.pop("expected_divergence", None),
        "failures": [] if verdict == "pass" else [f"max_abs {max_abs:.2e} > atol"],
        "metrics": {
            "max_abs": max_abs,
            "max_abs_index": [0, 1],
            "mae": max_abs / 10,
            "max_rel": max_abs,
            "kl": kw.pop("kl", None),
            "topk_agreement": None,
            "ref_rms": 1.0,
        },
        "tolerance": {"atol": 1e-5, "rtol": 0.0, "mae": 2e-6, "kl": None},
        "dtypes": {"reference": dtype, "candidate": dtype, "expected": dtype},
        "shapes": {"reference": [2, 20, 32], "candidate": [2, 20, 32]},
        "inputs": {"x": [2, 20, 32]},
        "config": {"preset": "tiny", "dim": 32},
        "hypothesis": kw.pop("hypothesis", None),
        "hypothesis_profile": PROFILE,
        "platform": {"backend": "cpu", "device_kind": "cpu", "device_count": 1, "python": "3.11", "system": "Linux"},
        "versions": {"python": "3.11", "jax": "0.10.2", "torch": "2.13.0"},
        "worker": "gw0",
        "time": "2026-01-01T00:00:00.000+00:00",
    }
    if "pair_class" in kw:
        r["pair_class"] = kw.pop("pair_class")
    assert not kw, kw
    assert validate(r) == [], validate(r)
    return r


def drift(pair: tuple[str, str] = ("kyutai", "flax"), *, over_from: int | None = 3) -> list[dict[str, Any]]:
    """Per-layer lm_hidden records, 6 layers x both stages; the propagated error exceeds the budget from `over_from`."""
    out = []
    for stage in ("propagated", "teacher_forced"):
        for layer in range(6):
            err = 0.0 if layer == 0 else 1e-6 * (layer + 1)
            if stage == "propagated" and over_from is not None and layer >= over_from:
                err = 1e-4 * layer
            out.append(
                rec(
                    "lm_hidden",
                    pair=pair,
                    layer=layer,
                    stage=stage,
                    max_abs=err,
                    verdict="fail" if err > 1e-5 else "pass",
                    node_id=f"parity/test_lm.py::test_layer_drift[{pair[0]}->{pair[1]}-float32]",
                )
            )
    return out


def fixture(*, crash: bool = True) -> list[dict[str, Any]]:
    """Records of every kind: passes, a control, an expected divergence, a failing hypothesis test with 2 shrink
    attempts, two whole-model drift runs and (unless `crash` is False) a worker crash."""
    shrink = [
        rec("attention", verdict="fail", max_abs=m, node_id="parity/test_attention.py::test_h", hypothesis=h)
        for m, h in (
            (0.5, {"is_final": False, "reproduce": "@reproduce_failure('6', b'AAA')"}),
            (0.3, {"is_final": False, "reproduce": "@reproduce_failure('6', b'AAB')"}),
            (2e-4, {"is_final": True, "reproduce": "@reproduce_failure('6', b'FINAL')"}),
        )
    ]
    out = [
        rec("rmsnorm"),
        rec("rmsnorm", pair=("hf", "ref"), max_abs=3e-7),
        rec("rmsnorm", control="eps_1e-5", verdict="fail", max_abs=1e-2),
        rec("rope", verdict="expected_divergence", expected_divergence="HF ignores the theta override", max_abs=0.2),
        *shrink,
        *drift(),
        *drift(("ref", "flax"), over_from=None),
    ]
    if crash:
        out.append(records.crash_record(node_id="parity/test_rope.py::test_crash", worker="gw1", failures=["gw1 died"]))
    return out


def write(path: Path, recs: list[dict[str, Any]], *, extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + "".join(extra_lines))
    return path
