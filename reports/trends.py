"""Since when: per component x pair x dtype, the worst max|d|/rms(ref) of every run in the history, and the run where
it left its band or started failing. The "Run history" section of `python -m reports render --history FILE`.

A series is one component x pair x dtype over the runs that hold it, in date order. Per run:
- worst: the largest max|d|/rms(ref) among the series' pass and fail records (negative controls and expected
  divergences left out, as in the summary matrix), NaN worst of all; budget: their tolerance atol.
- failing: the run has a "fail" record in the series.

Two findings, each about the latest run, each naming the run where the current state began:
- **failing since run k**: the latest run fails; k is the first run of the unbroken streak of failing runs that ends
  with it.
- **left its band at run k**: k is the earliest run such that every run from k to the latest is out of the band of
  the runs before k. Out of band: the worst is not finite, or over the budget, or above
  `FACTOR` x max(median of the finite worsts of the runs before k, `FLOOR` x budget) (the gate of `reports.diff`: an
  error moving from 0 to 1e-9 of a 1e-5 budget is noise). For the first run only the budget and non-finite apply.
  A metric that jumped and came back names no run; one that grew and stayed names the run where it grew.
Neither: the series is within its band.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from reports import analysis
from reports.history import Row, Run

FACTOR = 2.0
FLOOR = 0.01


def series(runs: list[Run], rows: Iterable[Row], *, current: str | None = None) -> list[dict[str, Any]]:
    """The series of a history, flagged ones first (then by component, pair, dtype).

    Args:
        runs: in date order (`history.runs`); a run with id None is the rendered records file, not stored.
        rows: the runs' comparisons; a row's `run_id` names its run (None: the unstored run).
        current: the sha256 of the records file being rendered: that run is marked "this run".

    Returns:
        Per series: component, pair, dtype, points (one per run holding the series: run, worst, budget, failing),
        failing_since and left_band (None, or the run, with the value, baseline and budget that set it), flagged and
        the sentence the page prints.
    """
    order = {r.id: i for i, r in enumerate(runs)}
    cells: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if row.control is not None or row.verdict not in ("pass", "fail") or row.run_id not in order:
            continue
        i = order[row.run_id]
        cell = cells[(str(row.component), str(row.pair), str(row.dtype))].setdefault(
            i, {"worst": None, "budget": None, "failing": False}
        )
        cell["failing"] |= row.verdict == "fail"
        if analysis.worse(row.max_abs_rms, cell["worst"]):  # the budget of the record that set the worst
            cell["worst"] = row.max_abs_rms
            cell["budget"] = row.atol if row.atol is not None else cell["budget"]
        elif cell["budget"] is None:
            cell["budget"] = row.atol
    out = []
    for (component, pair, dtype), by_run in cells.items():
        points = [{"run": _run_ref(runs[i], current), **by_run[i]} for i in sorted(by_run)]
        failing = failing_since(points)
        band = left_band(points)
        out.append(
            {
                "component": component,
                "pair": pair,
                "dtype": dtype,
                "points": points,
                "failing_since": failing,
                "left_band": band,
                "flagged": failing is not None or band is not None,
                "sentence": sentence(points, failing, band),
            }
        )
    return sorted(out, key=lambda s: (not s["flagged"], s["component"], s["pair"], s["dtype"]))


def failing_since(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first point of the failing streak that ends with the latest point (with `runs`, the streak's length), or
    None when the latest point does not fail."""
    k = len(points)
    while k > 0 and points[k - 1]["failing"]:
        k -= 1
    if k == len(points):
        return None
    return {"run": points[k]["run"], "runs": len(points) - k}


def left_band(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The earliest point from which every later point is out of the band of the points before it (see the module
    docstring), with its value, the baseline (median before it; None for the first) and budget; None when none is."""
    earlier: list[float] = []  # the finite worsts before k, sorted
    for k, p in enumerate(points):
        baseline = statistics.median(earlier) if earlier else None
        if all(_out_of_band(q["worst"], q["budget"], baseline) for q in reversed(points[k:])):
            return {"run": p["run"], "value": p["worst"], "baseline": baseline, "budget": p["budget"], "before": k}
        if p["worst"] is not None and math.isfinite(p["worst"]):
            bisect.insort(earlier, p["worst"])
    return None


def _out_of_band(x: float | None, budget: float | None, baseline: float | None) -> bool:
    if x is None:
        return False
    if not math.isfinite(x) or (budget is not None and x > budget):
        return True
    if baseline is None:
        return False
    return x > FACTOR * max(baseline, FLOOR * budget if budget else 0.0)


def sentence(points: list[dict[str, Any]], failing: dict[str, Any] | None, band: dict[str, Any] | None) -> str:
    """What the page says of a series: since which run it fails and/or left its band, else that it is within it."""
    parts = []
    if failing is not None:
        parts.append(f"failing since {failing['run']['label']} ({failing['runs']} run(s) in a row)")
    if band is not None:
        value, base, budget = (analysis.text(band[k], ".3g") for k in ("value", "baseline", "budget"))
        if band["value"] is not None and not math.isfinite(band["value"]):
            why = "not finite"
        elif band["budget"] is not None and band["value"] > band["budget"]:
            why = f"over its budget {budget}"
        else:
            why = f"above {FACTOR:g}x the median {base} of the {band['before']} run(s) before it (budget {budget})"
        parts.append(f"worst max|d|/rms left its band at {band['run']['label']}: {value}, {why}")
    if not parts:
        return f"within its band over {len(points)} run(s)"
    return "; ".join(parts)


def _run_ref(run: Run, current: str | None) -> dict[str, Any]:
    this = run.id is None or run.sha256 == current
    name = "this run, not stored" if run.id is None else f"run #{run.id}"
    note = "this run; " if this and run.id is not None else ""
    return {
        "id": run.id,
        "commit": run.commit,
        "date": run.date,
        "current": this,
        "short": run.short_commit(),
        "label": f"{name} ({note}{'commit ' if run.commit else ''}{run.short_commit()}, {run.when()})",
    }


def report(runs: list[Run], rows: Iterable[Row], *, db: str, current: str | None = None) -> dict[str, Any]:
    """The history section of summary.json: the runs, the series (`series`) and how many are flagged."""
    found = series(runs, rows, current=current)
    return {
        "db": db,
        "runs": [_run_ref(r, current) for r in runs],
        "series": found,
        "flagged": sum(s["flagged"] for s in found),
        "rule": {"factor": FACTOR, "floor": FLOOR},
    }
