"""Mutation results: the file the mutation job writes (`python -m parity.harness.mutation --out FILE`), its one reader
and the one aggregation every view of it shows (the job's closing lines, the HTML report's "Mutation score" section and
summary.json).

A results file holds one JSON object per planted mutant (`RESULT_FIELDS`):
    id, class (the porting-bug class), package (models_flax, models_ref, converters), file, verdict (`VERDICTS`),
    duration_s, tests (the pytest arguments run), failing (node ids of the failing tests of a killed mutant), reason
    (why a mutant is invalid or timed out, else None) and diff (the planted change, unified diff).

Verdicts: "killed" (a listed test failed), "survived" (all passed), "timeout" (the tests ran past the limit) and
"invalid" (the patch did not apply, the tests could not be collected or imported, or they fail without the mutation).
score = killed / (killed + survived): a timeout or an invalid mutant measures nothing, and is reported, never counted.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERDICTS: tuple[str, ...] = ("killed", "survived", "timeout", "invalid")
RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "class": str,
    "package": str,
    "file": str,
    "verdict": str,
    "duration_s": (int, float),
    "tests": list,
    "failing": list,
    "reason": (str, type(None)),
    "diff": str,
}

Result = Mapping[str, Any]


def problems(result: Any) -> list[str]:
    """The problems of one result line (missing fields, wrong types, an unknown verdict); empty when it is valid."""
    if not isinstance(result, Mapping):
        return [f"result is a {type(result).__name__}, not a dict"]
    found = [f"missing field {name!r}" for name in RESULT_FIELDS if name not in result]
    found += [
        f"{name} must be {want}, got {result[name]!r}"
        for name, want in RESULT_FIELDS.items()
        if name in result and (not isinstance(result[name], want) or isinstance(result[name], bool))
    ]
    if result.get("verdict") not in VERDICTS:
        found.append(f"verdict must be one of {VERDICTS}, got {result.get('verdict')!r}")
    return found


@dataclass
class Loaded:
    """A results file read leniently: the valid results in file order, (line number, problem) for every other line."""

    path: Path
    results: list[dict[str, Any]]
    malformed: list[tuple[int, str]] = field(default_factory=list)

    def warnings(self) -> list[str]:
        return [f"{self.path}:{n}: skipped malformed mutation result: {problem}" for n, problem in self.malformed]


def read(path: str | os.PathLike[str]) -> Loaded:
    """Reads a mutation results file; a line that is not JSON or not a valid result is listed and skipped.

    Raises:
        OSError: the file cannot be opened.
    """
    out = Loaded(path=Path(path), results=[])
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                result = json.loads(line)
            except json.JSONDecodeError as e:
                out.malformed.append((n, f"not JSON: {e.msg} at column {e.colno}"))
                continue
            found = problems(result)
            if found:
                out.malformed.append((n, "; ".join(found[:3])))
            else:
                out.results.append(result)
    return out


def line(result: Result) -> str:
    """One result as the job writes it (a line of the file, without the newline).

    Raises:
        ValueError: the result is not valid (`problems`), so the file never holds a line the reader skips.
    """
    found = problems(result)
    if found:
        raise ValueError(f"mutation result {result.get('id')!r}: " + "; ".join(found))
    return json.dumps({name: result[name] for name in RESULT_FIELDS}, allow_nan=False)


def score(killed: int, survived: int) -> float | None:
    """killed / (killed + survived), None when nothing was measured."""
    return killed / (killed + survived) if killed + survived else None


def _counts(results: Iterable[Result]) -> dict[str, Any]:
    counts: dict[str, Any] = dict.fromkeys(VERDICTS, 0)
    for r in results:
        counts[r["verdict"]] += 1
    counts["total"] = sum(counts[v] for v in VERDICTS)
    counts["score"] = score(counts["killed"], counts["survived"])
    return counts


def _grouped(results: list[Result], key: str) -> list[dict[str, Any]]:
    by: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by[r[key]].append(r)
    return [{key: name, **_counts(rs)} for name, rs in sorted(by.items())]


def headline(counts: Mapping[str, Any]) -> str:
    """A run's counts in the one sentence every view prints, e.g. "mutation score 0.9 (9 killed of 10 measured);
    1 survived, 0 timeouts, 2 invalid; 12 mutants"."""
    c = counts
    shown = "-" if c["score"] is None else f"{c['score']:.3g}"
    return (
        f"mutation score {shown} ({c['killed']} killed of {c['killed'] + c['survived']} measured); "
        f"{c['survived']} survived, {c['timeout']} timeouts, {c['invalid']} invalid; {c['total']} mutants"
    )


def summarize(loaded: Loaded) -> dict[str, Any]:
    """Everything the views show: counts and score overall, per class and per package, every survivor, every
    timeout and invalid mutant with its reason, the malformed lines, and the whole-job duration."""
    results = loaded.results
    counts = _counts(results)
    return {
        "results": str(loaded.path.resolve()),
        "headline": headline(counts),
        "counts": counts,
        "by_class": _grouped(results, "class"),
        "by_package": _grouped(results, "package"),
        "survivors": [r for r in results if r["verdict"] == "survived"],
        "unmeasured": [r for r in results if r["verdict"] in ("timeout", "invalid")],
        "killed": [r for r in results if r["verdict"] == "killed"],
        "duration_s": sum(float(r["duration_s"]) for r in results),
        "malformed_lines": [{"line": n, "problem": p} for n, p in loaded.malformed],
    }
