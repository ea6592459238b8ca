"""`validate()`: the problems of one parity record against `reports.schema`, empty when it is valid.

emit() and crash_record() check every record they build with it; `reports.recordfile.read` skips (and lists) a line
whose record it finds invalid, so the views aggregate only well-formed records.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from reports.schema import (
    ADDED_FIELDS,
    NONFINITE,
    PAIR_CLASSES,
    RECORD_FIELDS,
    REQUIRED_METRICS,
    SCHEMA_VERSION,
    STAGES,
    VERDICTS,
)

# What a field must be, as the problem message says it (formatted once: validate runs on every line a view reads).
_METRICS_WANT = f"None or a dict with numbers {REQUIRED_METRICS} (max_abs_index a list of int)"
_PAIR_CLASS_WANT = f"one of {PAIR_CLASSES} or None"
_STAGE_WANT = f"one of {STAGES} or None"
_VERDICT_WANT = f"one of {VERDICTS}"
_REQUIRED_FIELDS = tuple(f for f in RECORD_FIELDS if f not in ADDED_FIELDS)


def validate(record: Any) -> list[str]:
    """Returns the problems of a record (missing fields, wrong types, inconsistent verdict); empty when it is valid.

    Keys outside `RECORD_FIELDS` are allowed, and so is the absence of an `ADDED_FIELDS` field (an older record). A
    "worker_crash" record may leave the comparison fields None.
    """
    if not isinstance(record, Mapping):
        return [f"record is a {type(record).__name__}, not a dict"]
    problems = [f"missing field {f!r}" for f in _REQUIRED_FIELDS if f not in record]
    r = record
    crash = r.get("verdict") == "worker_crash"

    def check(field: str, ok: bool, want: str) -> None:
        if field in r and not ok:
            problems.append(f"{field} must be {want}, got {r[field]!r}")

    def opt(field: str, types: type | tuple[type, ...]) -> bool:
        return r.get(field) is None or isinstance(r.get(field), types)

    check("schema", r.get("schema") == SCHEMA_VERSION, str(SCHEMA_VERSION))
    check("node_id", opt("node_id", str), "a str or None")
    check("component", (isinstance(r.get("component"), str) and bool(r["component"])) or crash, "a non-empty str")
    check("pair", _str_dict(r.get("pair"), ("reference", "candidate")) or (crash and r.get("pair") is None), "a pair")
    pair_class_ok = r.get("pair_class") is None or r["pair_class"] in PAIR_CLASSES
    check("pair_class", pair_class_ok, _PAIR_CLASS_WANT)
    check("layer", r.get("layer") is None or (_is_int(r["layer"]) and r["layer"] >= 0), "an int >= 0 or None")
    check("layer_name", r.get("layer_name") is None or isinstance(r["layer_name"], str), "a str or None")
    check("stage", r.get("stage") is None or r["stage"] in STAGES, _STAGE_WANT)
    check("control", opt("control", str), "a str or None")
    check("verdict", r.get("verdict") in VERDICTS, _VERDICT_WANT)
    check("expected_divergence", opt("expected_divergence", str), "a str or None")
    failures = r.get("failures")
    check("failures", isinstance(failures, list) and all(isinstance(f, str) for f in failures), "a list of str")
    check("metrics", r.get("metrics") is None or _metrics_ok(r["metrics"]), _METRICS_WANT)
    check("tolerance", isinstance(r.get("tolerance"), dict) or (crash and r.get("tolerance") is None), "a dict")
    dtypes_ok = _str_dict(r.get("dtypes"), ("reference", "candidate", "expected"))
    check("dtypes", dtypes_ok or (crash and r.get("dtypes") is None), "reference/candidate/expected dtype names")
    check("shapes", r.get("shapes") is None or _shape_dict(r["shapes"], ("reference", "candidate")), "two shapes")
    check("inputs", r.get("inputs") is None or _shape_dict(r["inputs"]), "a dict of name -> shape (list of int)")
    check("config", opt("config", dict), "a dict or None")
    check("hypothesis", opt("hypothesis", dict), "a dict or None")
    check("hypothesis_profile", opt("hypothesis_profile", str), "a str or None")
    check("platform", isinstance(r.get("platform"), dict), "a dict")
    versions_ = r.get("versions")
    check("versions", isinstance(versions_, dict) and all(_opt_str(v) for v in versions_.values()), "name -> str|None")
    check("commit", opt("commit", str), "a str or None")
    check("worker", isinstance(r.get("worker"), str) and bool(r["worker"]), "a non-empty str")
    check("time", _is_iso_time(r.get("time")), "an ISO 8601 time")

    verdict, failed = r.get("verdict"), isinstance(failures, list) and len(failures) > 0
    if verdict == "pass" and (failed or r.get("metrics") is None):
        problems.append("a 'pass' record needs metrics and no failures")
    if verdict in ("fail", "expected_divergence", "worker_crash") and not failed:
        problems.append(f"a {verdict!r} record needs at least one failure message")
    if verdict == "expected_divergence" and not isinstance(r.get("expected_divergence"), str):
        problems.append("an 'expected_divergence' record needs the expected_divergence reason")
    return problems


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool)) or (isinstance(x, str) and x in NONFINITE)


def _opt_str(x: Any) -> bool:
    return x is None or isinstance(x, str)


def _str_dict(x: Any, keys: tuple[str, ...]) -> bool:
    return isinstance(x, dict) and all(isinstance(x.get(k), str) for k in keys)


def _shape(x: Any) -> bool:
    return isinstance(x, list) and all(_is_int(d) and d >= 0 for d in x)


def _shape_dict(x: Any, keys: tuple[str, ...] | None = None) -> bool:
    if not isinstance(x, dict) or (keys is not None and set(x) != set(keys)):
        return False
    return all(isinstance(k, str) and _shape(v) for k, v in x.items())


def _metrics_ok(m: Any) -> bool:
    if not isinstance(m, dict) or any(k not in m for k in REQUIRED_METRICS):
        return False
    if not all(_is_number(m[k]) for k in ("max_abs", "mae", "max_rel")):
        return False
    if not (isinstance(m["max_abs_index"], list) and all(_is_int(i) for i in m["max_abs_index"])):
        return False
    return all(m.get(k) is None or _is_number(m[k]) for k in ("kl", "topk_agreement"))


def _is_iso_time(x: Any) -> bool:
    if not isinstance(x, str):
        return False
    try:
        datetime.datetime.fromisoformat(x)
    except ValueError:
        return False
    return True
