"""One record per parity comparison: the schema, `emit()`, `validate()` (in reports/validate.py, importable from here)
and reading a records file back.

Flow: parity/harness/compare.py builds the comparison fields and calls `emit(record)` once per comparison, pass or
fail. emit() adds the context fields (node id, worker, time, platform, versions, hypothesis profile and reproduction blob), checks
the record with `validate()` (a bad record raises ValueError in the test that emitted it) and attaches it to the running
pytest item as the user property `(RECORD_KEY, record)`. pytest copies user properties onto every test report, xdist
carries the reports to the controller, and `reports.plugin` writes each record there as one JSON line. Only builtin JSON
types travel: emit() converts tuples to lists and numpy scalars/arrays through `.tolist()`, and raises TypeError on
anything else.

Outside a test (a bench script calling compare, code run at import or collection time) no item is current: emit()
appends the finished record to the module-level list `UNATTACHED` instead, so nothing is lost. The plugin does not
write those; a script that wants them reads the list itself (`json.dumps` works on every entry).

Non-finite floats are not JSON: emit() stores them as the strings "NaN", "Infinity" and "-Infinity" (`NONFINITE`, the
JavaScript names), so every line of a records file is strict JSON. `validate()` accepts them wherever a metric is a
number.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform as _platform
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

from reports.validate import validate

SCHEMA_VERSION = 1
RECORD_KEY = "parity_record"  # the user_properties name a record travels under

Verdict = Literal["pass", "fail", "expected_divergence", "worker_crash"]
Stage = Literal["propagated", "teacher_forced"]
VERDICTS: tuple[str, ...] = ("pass", "fail", "expected_divergence", "worker_crash")
STAGES: tuple[str, ...] = ("propagated", "teacher_forced")
NONFINITE: tuple[str, ...] = ("NaN", "Infinity", "-Infinity")
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
    reference: str  # implementation name: "hf", "kyutai", "ref" or "flax"
    candidate: str


class Dtypes(TypedDict):
    reference: str
    candidate: str
    expected: str  # the dtype the policy expects both to have


class Record(TypedDict):
    """One comparison. Declaration order is the key order of a written record.

    Filled by the caller (parity/harness/compare.py); `layer` .. `failures` may be omitted and default to None / []:
        component: policy component name ("attention", "rmsnorm", "logits", ...).
        pair: which implementation is the reference and which the candidate.
        layer: layer index for per-layer comparisons, else None.
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

    Filled by emit() (the caller must not pass them):
        schema, node_id (None when unattached), worker ("gw0".. or "master"), time (ISO 8601, UTC),
        platform (backend, device_kind, device_count, python, system, machine), versions (package -> version or None),
        hypothesis_profile (the loaded hypothesis settings profile, or None).

    Records may carry further keys; they are kept, after these.
    """

    schema: int
    node_id: str | None
    component: str | None
    pair: Pair | None
    layer: int | None
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
    worker: str
    time: str


RECORD_FIELDS: tuple[str, ...] = tuple(Record.__annotations__)
CONTEXT_FIELDS: tuple[str, ...] = ("schema", "node_id", "worker", "time", "platform", "versions", "hypothesis_profile")
CALLER_REQUIRED: tuple[str, ...] = ("component", "pair", "verdict", "metrics", "tolerance", "dtypes")
_CALLER_DEFAULTS: dict[str, Any] = {
    "layer": None,
    "stage": None,
    "control": None,
    "expected_divergence": None,
    "failures": [],
    "shapes": None,
    "inputs": None,
    "config": None,
    "hypothesis": None,
}

UNATTACHED: list[dict[str, Any]] = []
"""Records emitted while no pytest item was running (see the module docstring)."""

_current_item: Any = None  # the running pytest.Item; set and cleared by reports.plugin around each test


def set_current_item(item: Any) -> None:
    """Makes `item` (a pytest.Item, or None) the one emit() attaches records to. Called by reports.plugin."""
    global _current_item
    _current_item = item


def emit(record: Mapping[str, Any]) -> None:
    """Completes, checks and files one comparison record.

    Args:
        record: the comparison fields of `Record` (at least `CALLER_REQUIRED`), builtin JSON types, tuples or numpy
            values; not modified.

    Raises:
        TypeError: a value is not convertible to JSON.
        ValueError: a required field is missing, a context field is given, or `validate()` finds a problem.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"a parity record is a dict, got {type(record).__name__}")
    given = sorted(set(record) & set(CONTEXT_FIELDS))
    if given:
        raise ValueError(f"emit() fills {given}; the caller must not pass them")
    missing = [f for f in CALLER_REQUIRED if f not in record]
    if missing:
        raise ValueError(f"parity record lacks required fields {missing}; got {sorted(record)}")
    body = _jsonable(record, "record")
    item = _current_item
    hyp, auto = body.get("hypothesis"), _hypothesis_context()
    if auto is not None and (hyp is None or isinstance(hyp, dict)):
        hyp = {**auto, **(hyp or {})}
    context = {
        "schema": SCHEMA_VERSION,
        "node_id": None if item is None else item.nodeid,
        "worker": _worker_id(item),
        "time": _now(),
        "platform": platform_info(),
        "versions": versions(),
        "hypothesis_profile": hypothesis_profile(),
    }
    out = _ordered({**_CALLER_DEFAULTS, "failures": [], **body, "hypothesis": hyp, **context})
    problems = validate(out)
    if problems:
        raise ValueError("invalid parity record: " + "; ".join(problems))
    if item is None:
        UNATTACHED.append(out)
    else:
        item.user_properties.append((RECORD_KEY, out))


def crash_record(*, node_id: str | None, worker: str, failures: list[str]) -> dict[str, Any]:
    """The record the plugin writes for a test (or a worker) lost to a crashed xdist worker."""
    out = _ordered(
        {
            **_CALLER_DEFAULTS,
            "component": None,
            "pair": None,
            "verdict": "worker_crash",
            "failures": list(failures),
            "metrics": None,
            "tolerance": None,
            "dtypes": None,
            "schema": SCHEMA_VERSION,
            "node_id": node_id,
            "worker": worker,
            "time": _now(),
            "platform": platform_info(),
            "versions": versions(),
            "hypothesis_profile": hypothesis_profile(),
        }
    )
    problems = validate(out)
    if problems:
        raise ValueError("invalid crash record: " + "; ".join(problems))
    return out


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts records into disjoint classes: pass, fail, controls, expected_divergence, worker_crash (+ total).

    A record with a `control` counts as a negative control whatever its verdict; `controls_passed` counts the controls
    that did not fail, i.e. a porting bug the suite no longer catches.
    """
    counts = dict.fromkeys(("total", "pass", "fail", "controls", "controls_passed", "expected_divergence"), 0)
    counts["worker_crash"] = 0
    for r in records:
        counts["total"] += 1
        verdict = r.get("verdict")
        if verdict == "worker_crash":
            counts["worker_crash"] += 1
        elif r.get("control") is not None:
            counts["controls"] += 1
            counts["controls_passed"] += verdict == "pass"
        elif verdict in counts:
            counts[verdict] += 1
    return counts


def load(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Reads a records JSONL file; raises ValueError naming the line that does not parse."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e}") from e
    return out


def meta_path(records_path: str | os.PathLike[str]) -> Path:
    """The session sidecar of a records file: records.jsonl -> records.meta.json."""
    return Path(records_path).with_suffix(".meta.json")


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = [("python", _platform.python_version())]
    for name in VERSION_PACKAGES:
        try:
            found.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers (None when absent); computed once per process."""
    return dict(_versions())


_platform_cache: dict[str, Any] | None = None


def platform_info() -> dict[str, Any]:
    """Where the numbers were computed: the jax backend and device kind (once jax is imported), python and OS.

    Before jax is imported the backend reads "cpu" (only torch, on CPU, can have run) and nothing is cached, so that a
    later call after jax has started reports the accelerator.
    """
    global _platform_cache
    if _platform_cache is not None:
        return dict(_platform_cache)
    info: dict[str, Any] = {
        "backend": "cpu",
        "device_kind": None,
        "device_count": None,
        "python": _platform.python_version(),
        "system": _platform.platform(),
        "machine": _platform.machine(),
    }
    jax = sys.modules.get("jax")
    if jax is None:
        return info
    try:
        devices = jax.devices()
        info.update(backend=jax.default_backend(), device_kind=devices[0].device_kind, device_count=len(devices))
    except Exception as e:  # a broken accelerator plugin must not hide the comparison; say so in the record instead
        info.update(backend=None, backend_error=f"{type(e).__name__}: {e}")
    _platform_cache = info
    return dict(info)


def hypothesis_profile() -> str | None:
    """The loaded hypothesis settings profile, or None when hypothesis has not been imported."""
    hypothesis = sys.modules.get("hypothesis")
    if hypothesis is None:
        return None
    settings = hypothesis.settings
    try:
        return settings.get_current_profile_name()
    except (AttributeError, AssertionError):
        return getattr(settings, "_current_profile", None)


def _hypothesis_context() -> dict[str, Any] | None:
    """Reproduction data of the running hypothesis example, or None outside one."""
    if "hypothesis" not in sys.modules:
        return None
    from hypothesis.control import current_build_context
    from hypothesis.errors import InvalidArgument

    try:
        ctx = current_build_context()
    except InvalidArgument:
        return None
    info: dict[str, Any] = {"is_final": bool(ctx.is_final), "reproduce": None}
    try:  # private API: reproduction data is a convenience and must never fail a comparison
        from hypothesis.core import reproduction_decorator

        info["reproduce"] = reproduction_decorator(ctx.data.choices)
    except Exception:
        pass
    return info


def _worker_id(item: Any) -> str:
    workerinput = getattr(getattr(item, "config", None), "workerinput", None)
    if workerinput is not None:
        return str(workerinput.get("workerid", "master"))
    if item is not None:
        return "master"
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    return {**{f: record[f] for f in RECORD_FIELDS if f in record}, **record}


def _jsonable(x: Any, path: str) -> Any:
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        if math.isfinite(x):
            return float(x)
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, str):
        return str(x)
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise TypeError(f"{path}: key {k!r} is a {type(k).__name__}; record keys are str")
            out[str(k)] = _jsonable(v, f"{path}.{k}")
        return out
    if isinstance(x, list | tuple):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(x)]
    if callable(getattr(x, "tolist", None)):  # numpy scalars and arrays, without importing numpy
        return _jsonable(x.tolist(), path)
    raise TypeError(f"{path}: {type(x).__name__} {x!r:.80} is not a builtin JSON type")
