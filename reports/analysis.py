"""What the HTML report and `python -m reports diff` compute from records: lenient reading, the summary matrix, the
worst cases per component, the per-layer drift series, the expected divergences and the environment.

Errors are compared in units of the reference's rms: `max_abs / ref_rms` and `mae / ref_rms`, the same units as the
policy's `atol` and `mae` budgets. Hypothesis replays a failing example many times while shrinking; only the final
replay of each test counts (`reports.summary._final`).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.records import meta_path
from reports.summary import _final

Record = Mapping[str, Any]
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass
class Loaded:
    """A records file read leniently: the records that parse, and `malformed` (line number, problem) for the rest."""

    path: Path
    records: list[dict[str, Any]]
    malformed: list[tuple[int, str]] = field(default_factory=list)
    meta: dict[str, Any] | None = None


def read(path: str | os.PathLike[str]) -> Loaded:
    """Reads a records JSONL file; a line that is not a JSON object (truncated, garbage) is listed and skipped."""
    path = Path(path)
    out = Loaded(path=path, records=[])
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                out.malformed.append((n, f"not JSON: {e.msg} at column {e.colno}"))
                continue
            if not isinstance(rec, dict) or "verdict" not in rec:
                out.malformed.append((n, f"not a parity record: {line.strip()[:80]}"))
                continue
            out.records.append(rec)
    try:
        out.meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        out.meta = None
    return out


def num(x: Any) -> float | None:
    """A metric as a float (the strings "NaN"/"Infinity"/"-Infinity" included), None when absent or not a number."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    return _NONFINITE.get(x) if isinstance(x, str) else None


def normalized(r: Record, metric: str = "max_abs") -> float | None:
    """`metric / ref_rms` (the policy's units); the raw value when it is 0 or non-finite; None when unknown."""
    m = r.get("metrics") or {}
    value, rms = num(m.get(metric)), num(m.get("ref_rms"))
    if value is None:
        return None
    if value == 0 or not math.isfinite(value):
        return value
    return value / rms if rms and math.isfinite(rms) and rms > 0 else None


def pair_name(r: Record) -> str:
    p = r.get("pair") or {}
    return f"{p.get('reference', '?')}->{p.get('candidate', '?')}"


def dtype_name(r: Record) -> str:
    return (r.get("dtypes") or {}).get("expected") or "?"


def severity(x: float | None) -> float:
    """Sort key: larger is worse; NaN and Inf are the worst, unknown the least bad."""
    if x is None:
        return -1.0
    return math.inf if math.isnan(x) else x


def counted(records: Iterable[Record]) -> list[Record]:
    """The records a report counts: all but the shrink attempts of failing hypothesis tests."""
    return list(_final(list(records)))


def matrix(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per component x pair x dtype: counts, the worst normalized error and a status for the cell's colour."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"pass": 0, "fail": 0, "controls": 0, "controls_not_failing": 0, "divergences": 0, "worst": None}
    )
    for r in records:
        if r.get("verdict") == "worker_crash":
            continue
        row = rows[(str(r.get("component")), pair_name(r), dtype_name(r))]
        if r.get("control"):
            row["controls"] += 1
            row["controls_not_failing"] += r.get("verdict") == "pass"
        elif r.get("verdict") == "expected_divergence":
            row["divergences"] += 1
        else:
            row["pass" if r.get("verdict") == "pass" else "fail"] += 1
            e = normalized(r)
            if e is not None and severity(e) > severity(row["worst"]):
                row["worst"] = e
    out = []
    for (component, pair, dtype), v in sorted(rows.items()):
        status = "fail" if v["fail"] or v["controls_not_failing"] else "xdiv" if v["divergences"] else "pass"
        if not (v["pass"] or v["fail"] or v["divergences"]):
            status = "controls"
        out.append({"component": component, "pair": pair, "dtype": dtype, "status": status, **v})
    return out


def worst_cases(records: Iterable[Record], *, per_component: int = 10) -> dict[str, list[Record]]:
    """Per component, the comparisons (not controls, not expected divergences) with the largest max|d|/rms."""
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.get("verdict") in ("pass", "fail") and not r.get("control"):
            by[str(r.get("component"))].append(r)
    return {
        c: sorted(rs, key=lambda r: (r.get("verdict") == "fail", severity(normalized(r))), reverse=True)[:per_component]
        for c, rs in sorted(by.items())
    }


def drift(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Per whole-model run (node id x pair x dtype x control): per stage, the error of every layer and the first layer
    whose max|d|/rms exceeds its budget (`tolerance.atol`) or whose verdict is not "pass"."""
    groups: dict[tuple[Any, ...], dict[str, dict[int, Record]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        layer, stage = r.get("layer"), r.get("stage")
        if layer is None or stage is None or r.get("verdict") == "worker_crash":
            continue
        key = (str(r.get("node_id")), str(r.get("component")), pair_name(r), dtype_name(r), r.get("control"))
        old = groups[key][stage].get(layer)
        if old is None or severity(normalized(r)) > severity(normalized(old)):
            groups[key][stage][layer] = r
    out = []
    for (node_id, component, pair, dtype, control), stages in sorted(groups.items(), key=lambda kv: str(kv[0])):
        series = {}
        for stage, layers in sorted(stages.items()):
            points = []
            for layer in sorted(layers):
                r = layers[layer]
                budget = num((r.get("tolerance") or {}).get("atol"))
                err = normalized(r)
                over = r.get("verdict") != "pass" or (err is not None and budget is not None and severity(err) > budget)
                points.append(
                    {
                        "layer": layer,
                        "max_abs_rms": err,
                        "mae_rms": normalized(r, "mae"),
                        "budget": budget,
                        "verdict": r.get("verdict"),
                        "over": over,
                    }
                )
            first = next((p["layer"] for p in points if p["over"]), None)
            series[stage] = {"points": points, "first_diverging": first}
        out.append(
            {
                "node_id": node_id,
                "component": component,
                "pair": pair,
                "dtype": dtype,
                "control": control,
                "stages": series,
            }
        )
    return out


def expected_divergences(records: Iterable[Record]) -> list[dict[str, Any]]:
    """The documented upstream disagreements: one row per (reason, component, pair, dtype), its count and worst."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in records:
        if r.get("verdict") != "expected_divergence":
            continue
        key = (str(r.get("expected_divergence")), str(r.get("component")), pair_name(r), dtype_name(r))
        row = rows.setdefault(key, {"count": 0, "worst": None, "node_id": r.get("node_id")})
        row["count"] += 1
        e = normalized(r)
        if e is not None and severity(e) > severity(row["worst"]):
            row.update(worst=e, node_id=r.get("node_id"))
    return [{"reason": k[0], "component": k[1], "pair": k[2], "dtype": k[3], **v} for k, v in sorted(rows.items())]


def controls(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Negative controls: each deliberately broken variant and whether it failed, as it must."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in records:
        if not r.get("control") or r.get("verdict") == "worker_crash":
            continue
        key = (str(r.get("component")), str(r.get("control")), pair_name(r), dtype_name(r))
        row = rows.setdefault(key, {"count": 0, "not_failing": 0, "node_id": r.get("node_id")})
        row["count"] += 1
        row["not_failing"] += r.get("verdict") == "pass"
    return [{"component": k[0], "control": k[1], "pair": k[2], "dtype": k[3], **v} for k, v in sorted(rows.items())]


def environment(loaded: Loaded) -> dict[str, Any]:
    """Versions, platforms and hypothesis profiles found in the records (all distinct values), plus the run's meta."""

    def distinct(field_: str) -> list[Any]:
        seen: dict[str, Any] = {}
        for r in loaded.records:
            v = r.get(field_)
            seen.setdefault(json.dumps(v, sort_keys=True), v)
        return list(seen.values())

    meta = loaded.meta or {}
    run = {k: meta.get(k) for k in ("start", "end", "duration_s", "exitstatus", "workers", "jax_platforms", "args")}
    return {
        "versions": distinct("versions"),
        "platforms": distinct("platform"),
        "hypothesis_profiles": [p for p in distinct("hypothesis_profile") if p is not None]
        or ([meta["hypothesis_profile"]] if meta.get("hypothesis_profile") else []),
        "workers": sorted({str(r.get("worker")) for r in loaded.records}),
        "run": run if meta else None,
    }


def crashes(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.get("verdict") == "worker_crash"]


def count(records: Iterable[Record]) -> dict[str, int]:
    from reports.records import summarize

    return summarize(records)
