"""The parity record schema: its constants and types. A leaf module: it imports nothing from `reports`.

`reports.validate` checks a record against these, `reports.records` builds records to them, `reports.recordfile` reads
them back and `reports.analysis` aggregates them; keeping the schema apart keeps that import graph free of cycles.

Non-finite floats are not JSON: a record stores them as the strings "NaN", "Infinity" and "-Infinity" (`NONFINITE`, the
JavaScript names), so every line of a records file is strict JSON; wherever a metric is a number, these strings are too.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypedDict

SCHEMA_VERSION = 1
RECORD_KEY = "parity_record"  # the user_properties name a record travels under

Verdict = Literal["pass", "fail", "expected_divergence", "worker_crash"]
Stage = Literal["propagated", "teacher_forced"]
PairClass = Literal["ours-ours", "upstream-ours", "upstream-upstream"]
VERDICTS: tuple[str, ...] = ("pass", "fail", "expected_divergence", "worker_crash")
STAGES: tuple[str, ...] = ("propagated", "teacher_forced")
PAIR_CLASSES: tuple[str, ...] = ("ours-ours", "upstream-ours", "upstream-upstream")
NONFINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
"""How a record writes a non-finite float (name -> value)."""
REQUIRED_METRICS: tuple[str, ...] = ("max_abs", "max_abs_index", "mae", "max_rel")
VERSION_PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "moshi",
    "jax",
    "jaxlib",
    "flax",
    "numpy",
    "hypothesis",
    "pytest",
)


class Pair(TypedDict):
    """Which implementation is the reference and which the candidate: "hf", "kyutai", "ref" or "flax"."""

    reference: str
    candidate: str


class Dtypes(TypedDict):
    """The output dtype names of both sides and the one the policy expects both to have."""

    reference: str
    candidate: str
    expected: str


class Record(TypedDict):
    """One comparison. Declaration order is the key order of a written record.

    Filled by the caller (parity/harness/compare.py); `CALLER_DEFAULTS` lists the fields it may omit:
        component: policy component name ("attention", "rmsnorm", "logits", ...).
        pair: which implementation is the reference and which the candidate.
        pair_class: the tolerance class of the pair ("ours-ours", "upstream-ours", "upstream-upstream"), or None.
            Records written before this field existed lack it; readers treat it as None.
        layer: layer index for per-layer comparisons, else None.
        layer_name: what the layer index is, for the reader ("embedding", "temporal 3", "depth 1"), else None.
            Records written before this field existed lack it; readers fall back to the index.
        stage: "propagated" or "teacher_forced" for whole-model drift, else None.
        control: name of the deliberately broken variant of a negative control (its expected verdict is "fail").
        verdict: "pass", "fail", "expected_divergence" (a failure documented as an upstream disagreement) or
            "worker_crash" (written by the plugin only: the xdist worker died; `failures` holds the error text).
        expected_divergence: why a failure is expected, when it is.
        failures: one message per failed check; empty exactly when the verdict is "pass".
        metrics: max_abs, max_abs_index (list[int]), mae, max_rel, optional kl and topk_agreement and any further
            numbers; None when they could not be computed (shape mismatch, non-finite values).
        tolerance: the policy entry the metrics were checked against.
        dtypes: reference, candidate and expected dtype names.
        shapes: reference and candidate output shapes.
        inputs: input name -> shape.
        config: the config the implementations were built from.
        hypothesis: reproduction data. Inside a hypothesis test emit() adds "reproduce" (the `@reproduce_failure(...)`
            decorator for the choices drawn so far) and "is_final" (True only on hypothesis' final replay of a failing
            example; a failing hypothesis test also emits one record per example tried while shrinking); the
            caller's keys win.

    Filled by emit() (`CONTEXT_FIELDS`; the caller must not pass them):
        schema, node_id (None when unattached), worker ("gw0".. or "master"), time (ISO 8601, UTC),
        platform (backend, device_kind, device_count, python, system, machine), versions (package -> version or None),
        commit (`git rev-parse HEAD` of the checkout the `reports` package runs from, + "-dirty" when its work tree has
        uncommitted changes; None outside a git checkout or without git; records written before this field existed
        lack it and read as None), hypothesis_profile (the loaded hypothesis settings profile, or None).

    Records may carry further keys; they are kept, after these.
    """

    schema: int
    node_id: str | None
    component: str | None
    pair: Pair | None
    pair_class: PairClass | None
    layer: int | None
    layer_name: str | None
    stage: Stage | None
    control: str | None
    verdict: Verdict
    expected_divergence: str | None
    failures: list[str]
    metrics: dict[str, Any] | None
    tolerance: dict[str, Any] | None
    dtypes: Dtypes | None
    shapes: dict[str, list[int]] | None
    inputs: dict[str, list[int]] | None
    config: dict[str, Any] | None
    hypothesis: dict[str, Any] | None
    hypothesis_profile: str | None
    platform: dict[str, Any]
    versions: dict[str, str | None]
    commit: str | None
    worker: str
    time: str


RECORD_FIELDS: tuple[str, ...] = tuple(Record.__annotations__)
CONTEXT_FIELDS: tuple[str, ...] = (
    "schema",
    "node_id",
    "worker",
    "time",
    "platform",
    "versions",
    "commit",
    "hypothesis_profile",
)
CALLER_REQUIRED: tuple[str, ...] = ("component", "pair", "verdict", "metrics", "tolerance", "dtypes")
CALLER_DEFAULTS: dict[str, Any] = {
    "pair_class": None,
    "layer": None,
    "layer_name": None,
    "stage": None,
    "control": None,
    "expected_divergence": None,
    "failures": [],
    "shapes": None,
    "inputs": None,
    "config": None,
    "hypothesis": None,
}
"""The caller fields emit() fills when omitted (a fresh list for `failures` each time)."""

ADDED_FIELDS: tuple[str, ...] = ("pair_class", "commit", "layer_name")
"""Fields added to schema 1 after records were first written: a record may lack them, and then holds None."""


def json_number(x: float) -> float | str:
    """`x` as a record stores it: itself when finite, else its `NONFINITE` name."""
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
