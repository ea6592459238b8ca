"""The one aggregation of records that every view shows: the text summary, the HTML report and summary.json, the run
diff and the plugin's closing counts.

- `counted()`: hypothesis replays a failing example many times while shrinking; only the final replay of each test
  counts, the shrink attempts are dropped.
- `normalized()`: errors in units of the reference's rms, `max_abs / ref_rms` and `mae / ref_rms` (the units of the
  policy's `atol` and `mae` budgets), the records' "NaN"/"Infinity" strings read as floats; `severity()` ranks them,
  NaN worst of all (no number at all), then infinity.
- `classify()` / `count()`: the disjoint classes pass, fail, controls (negative controls, whatever their verdict),
  expected_divergence and worker_crash, plus controls_not_failing (controls that passed: a porting bug the suite no
  longer catches); `headline()` states them in the one sentence the terminal line, the summary, the page and
  summary.json all print.
- `text()`: how every view writes a metric, NaN, infinity and "no number" included.
- `budget_ratio()`: a comparison's worst checked metric as a fraction of its budget (1 = at the budget).
- `matrix()`: one row per component x pair x dtype with those counts, the worst normalized error and the worst
  `budget_ratio`.

The remaining functions are the HTML report's further sections: worst cases, per-layer drift, expected divergences,
negative controls, worker crashes and the environment.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from reports.schema import NONFINITE, json_number

Record = Mapping[str, Any]  # a `schema.Record` as read back (one from before `ADDED_FIELDS` lacks those)
_CELL_COUNTS = {"pass": 0, "fail": 0, "controls": 0, "controls_not_failing": 0, "expected_divergence": 0}


def counted(records: Iterable[Record]) -> list[Record]:
    """The records a view counts: all but the shrink attempts of failing hypothesis tests.

    A test whose records include hypothesis' final replay (`hypothesis.is_final`) counts only the final replay's
    records; every other record of that test was emitted while shrinking.
    """
    records = list(records)
    finals = {r.get("node_id") for r in records if _is_final(r)}
    return [r for r in records if r.get("node_id") not in finals or _is_final(r)]


def _is_final(r: Record) -> bool:
    return bool((r.get("hypothesis") or {}).get("is_final"))


def classify(r: Record) -> str:
    """The class of one record: "pass", "fail", "controls", "expected_divergence" or "worker_crash".

    A record with a control counts as a control whatever its verdict; a verdict outside the schema counts as "fail".
    """
    verdict = r.get("verdict")
    if verdict == "worker_crash":
        return "worker_crash"
    if r.get("control") is not None:
        return "controls"
    if verdict == "expected_divergence":
        return "expected_divergence"
    return "pass" if verdict == "pass" else "fail"


def _tally(counts: dict[str, int], r: Record) -> None:
    cls = classify(r)
    counts[cls] += 1
    counts["controls_not_failing"] += cls == "controls" and r.get("verdict") == "pass"


def count(records: Iterable[Record]) -> dict[str, int]:
    """Class counts of a run: `total` records; per `classify` class the counted ones (see `counted`);
    `controls_not_failing` among the controls; the `shrink_attempts` not counted; and `comparisons`, the counted
    records that compared something: pass + fail + controls + expected_divergence. total = comparisons + worker_crash
    + shrink_attempts."""
    records = list(records)
    kept = counted(records)
    counts = {"total": len(records), "comparisons": 0, **_CELL_COUNTS, "worker_crash": 0}
    for r in kept:
        _tally(counts, r)
    counts["comparisons"] = len(kept) - counts["worker_crash"]
    counts["shrink_attempts"] = len(records) - len(kept)
    return counts


def headline(counts: Mapping[str, int]) -> str:
    """A run's `count` in the one sentence every view prints: the comparisons by class, then the records that are not
    comparisons (worker crashes, and the shrink attempts of failing hypothesis tests, which `counted` drops), then
    the total, e.g. "29 comparisons (25 pass, 2 fail, 1 negative controls, 1 expected divergences), 1 worker crash,
    2 hypothesis shrink attempts not counted; 32 records"."""
    c = counts
    line = (
        f"{c['comparisons']} comparisons ({c['pass']} pass, {c['fail']} fail, {c['controls']} negative controls, "
        f"{c['expected_divergence']} expected divergences)"
    )
    if c["worker_crash"]:
        line += f", {c['worker_crash']} worker crash{'es' if c['worker_crash'] != 1 else ''}"
    if c["shrink_attempts"]:
        line += f", {c['shrink_attempts']} hypothesis shrink attempts not counted"
    return f"{line}; {c['total']} records"


def num(x: Any) -> float | None:
    """A metric as a float (the `NONFINITE` strings "NaN"/"Infinity"/"-Infinity" included), None when absent or not a
    number."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    return NONFINITE.get(x) if isinstance(x, str) else None


def normalized(r: Record, metric: str = "max_abs") -> float | None:
    """`metric / ref_rms` (the policy's units); the raw value when it is 0 or non-finite; None when unknown."""
    m = r.get("metrics") or {}
    value, rms = num(m.get(metric)), num(m.get("ref_rms"))
    if value is None:
        return None
    if value == 0 or not math.isfinite(value):
        return value
    return value / rms if rms and math.isfinite(rms) and rms > 0 else None


def text(x: float | None, spec: str) -> str:
    """A metric as every view prints it (summary, diff, page): "-" when there is no number, the records' names ("NaN",
    "Infinity", "-Infinity") when non-finite, else formatted with `spec` (".3g", ".2e")."""
    if x is None:
        return "-"
    shown = json_number(x)
    return shown if isinstance(shown, str) else format(shown, spec)


def pair_name(r: Record) -> str:
    """ "reference->candidate", or "?->?" for a record without a pair (a worker crash)."""
    p = r.get("pair") or {}
    return f"{p.get('reference', '?')}->{p.get('candidate', '?')}"


def dtype_name(r: Record) -> str:
    """The dtype the comparison was judged in: the policy key's (the dtype the implementations computed in, e.g.
    bfloat16 for the float32 loss of a bfloat16 model), else the expected dtype of the arrays, "?" when neither."""
    key = (r.get("tolerance") or {}).get("key")
    if isinstance(key, list) and key and isinstance(key[0], str):
        return key[0]
    return (r.get("dtypes") or {}).get("expected") or "?"


def severity(x: float | None) -> tuple[int, float]:
    """Sort key: larger is worse. Unknown (None) is the least bad, then numbers by value, then NaN: a comparison that
    produced no number at all ranks above one that overflowed to infinity."""
    if x is None:
        return (0, 0.0)
    return (2, 0.0) if math.isnan(x) else (1, x)


def worse(x: float | None, than: float | None) -> bool:
    """Whether `x` ranks strictly worse than `than` (`severity`)."""
    return severity(x) > severity(than)


BUDGETS = (("max_abs", "atol"), ("mae", "mae"), ("kl", "kl"))
"""The metrics `budget_ratio` weighs against a budget: (metric, tolerance key). max_abs and mae are taken in units of
rms(ref) (`normalized`), the units of atol and mae; kl is absolute, as its budget."""


def budget_ratio(r: Record) -> float | None:
    """The largest of metric / budget over `BUDGETS` (max|d|/rms / atol, mae/rms / mae, kl / kl), each where both the
    metric and a positive budget are recorded; None when none is. NaN when a metric is NaN (no number ranks worst,
    `severity`), infinity when one overflowed.

    One definition for every view: above 1 a metric exceeds its budget. The elementwise check also allows rtol * |ref|
    per element (bf16 entries), so there a comparison can pass above 1; with rtol 0, the max_abs ratio is above 1
    exactly when that check fails. The top-k agreement (a floor, not a budget) is not weighed.
    """
    tol = r.get("tolerance") or {}
    worst = None
    for metric, key in BUDGETS:
        value = num((r.get("metrics") or {}).get(metric)) if metric == "kl" else normalized(r, metric)
        budget = num(tol.get(key))
        if value is None or budget is None or not budget > 0:
            continue
        ratio = value / budget if math.isfinite(value) else value
        if worse(ratio, worst):
            worst = ratio
    return worst


def over_budget(ratio: float | None) -> bool:
    """Whether a `budget_ratio` is over the budget: above 1, infinite or NaN."""
    return ratio is not None and not ratio <= 1


def ratio_text(ratio: float | None) -> str:
    """A `budget_ratio` as every view prints it: "0.42x", "12x", "NaN", "Infinity", "-" when there is none."""
    shown = text(ratio, ".2g")
    return f"{shown}x" if ratio is not None and math.isfinite(ratio) else shown


def matrix(records: Iterable[Record]) -> list[dict[str, Any]]:
    """One row per component x pair x dtype of the counted records (see `counted`; worker crashes belong to no cell).

    Each row holds the class counts of `count` (pass, fail, controls, controls_not_failing, expected_divergence), the
    pair's tolerance class (`pair_class`: the records' value, distinct values joined by "/" should they disagree,
    None when no record names one), `worst` (the worst `normalized` error among the pass and fail records),
    `budget_ratio` (the worst `budget_ratio` among them, not necessarily the same record's), `over_budget`
    (`over_budget` of that ratio) and a `status` for the cell's colour: fail, xdiv (expected divergences only), pass,
    or controls (nothing but controls).
    """
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    classes: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in records:
        cls = classify(r)
        if cls == "worker_crash":
            continue
        key = (str(r.get("component")), pair_name(r), dtype_name(r))
        row = rows.setdefault(key, {**_CELL_COUNTS, "worst": None, "budget_ratio": None})
        _tally(row, r)
        if r.get("pair_class") is not None:
            classes[key].add(str(r["pair_class"]))
        if cls in ("pass", "fail"):
            e, ratio = normalized(r), budget_ratio(r)
            if worse(e, row["worst"]):
                row["worst"] = e
            if worse(ratio, row["budget_ratio"]):
                row["budget_ratio"] = ratio
    out = []
    for (component, pair, dtype), v in sorted(rows.items()):
        status = "fail" if v["fail"] or v["controls_not_failing"] else "xdiv" if v["expected_divergence"] else "pass"
        if not (v["pass"] or v["fail"] or v["expected_divergence"]):
            status = "controls"
        pair_class = "/".join(sorted(classes[(component, pair, dtype)])) or None
        out.append(
            {
                "component": component,
                "pair": pair,
                "pair_class": pair_class,
                "dtype": dtype,
                "status": status,
                **v,
                "over_budget": over_budget(v["budget_ratio"]),
            }
        )
    return out


def worst_cases(records: Iterable[Record], *, per_component: int = 10) -> dict[str, list[Record]]:
    """Per component, the comparisons (not controls, not expected divergences) with the largest max|d|/rms."""
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if classify(r) in ("pass", "fail"):
            by[str(r.get("component"))].append(r)
    return {
        c: sorted(rs, key=lambda r: (r.get("verdict") == "fail", severity(normalized(r))), reverse=True)[:per_component]
        for c, rs in sorted(by.items())
    }


def drift(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Per whole-model run (node id x pair x dtype x control): per stage, the error of every layer (with the layer's
    recorded `layer_name`, None when the record has none) and the first layer whose max|d|/rms exceeds its budget
    (`tolerance.atol`) or whose verdict is not "pass": its index and its `layer_label`."""
    groups: dict[tuple[Any, ...], dict[str, dict[int, Record]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        layer, stage = r.get("layer"), r.get("stage")
        if layer is None or stage is None or classify(r) == "worker_crash":
            continue
        key = (str(r.get("node_id")), str(r.get("component")), pair_name(r), dtype_name(r), r.get("control"))
        old = groups[key][stage].get(layer)
        if old is None or worse(normalized(r), normalized(old)):
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
                over = r.get("verdict") != "pass" or (budget is not None and worse(err, budget))
                points.append(
                    {
                        "layer": layer,
                        "layer_name": r.get("layer_name"),
                        "max_abs_rms": err,
                        "mae_rms": normalized(r, "mae"),
                        "budget": budget,
                        "verdict": r.get("verdict"),
                        "over": over,
                    }
                )
            first = next((p for p in points if p["over"]), None)
            series[stage] = {
                "points": points,
                "first_diverging": None if first is None else first["layer"],
                "first_diverging_name": None if first is None else layer_label(first),
            }
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


def layer_label(point: Mapping[str, Any]) -> str:
    """A `drift` point's layer for people: its `layer_name` and index ("temporal 3 (layer 4)"), else "layer 4"."""
    name = point.get("layer_name")
    return f"{name} (layer {point['layer']})" if name else f"layer {point['layer']}"


def drift_charts(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The `drift` runs as the page draws them: one chart per component x dtype x control (a negative control's runs
    apart from the real ones), every pair's run overlaid, the charts sorted with the controls last."""
    groups: dict[tuple[str, str, Any], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["component"], run["dtype"], run["control"])].append(run)
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2] is not None, str(k[2])))
    return [{"component": c, "dtype": d, "control": k, "runs": groups[(c, d, k)]} for c, d, k in order]


def expected_divergences(records: Iterable[Record]) -> list[dict[str, Any]]:
    """The documented upstream disagreements: one row per (reason, component, pair, dtype), its count and worst."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in records:
        if classify(r) != "expected_divergence":
            continue
        key = (str(r.get("expected_divergence")), str(r.get("component")), pair_name(r), dtype_name(r))
        row = rows.setdefault(key, {"count": 0, "worst": None, "node_id": r.get("node_id")})
        row["count"] += 1
        e = normalized(r)
        if worse(e, row["worst"]):
            row.update(worst=e, node_id=r.get("node_id"))
    return [{"reason": k[0], "component": k[1], "pair": k[2], "dtype": k[3], **v} for k, v in sorted(rows.items())]


def controls(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Negative controls: each deliberately broken variant and whether it failed, as it must."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in records:
        if classify(r) != "controls":
            continue
        key = (str(r.get("component")), str(r.get("control")), pair_name(r), dtype_name(r))
        row = rows.setdefault(key, {"count": 0, "not_failing": 0, "node_id": r.get("node_id")})
        row["count"] += 1
        row["not_failing"] += r.get("verdict") == "pass"
    return [{"component": k[0], "control": k[1], "pair": k[2], "dtype": k[3], **v} for k, v in sorted(rows.items())]


def environment(records: Iterable[Record], meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Versions, platforms and hypothesis profiles found in the comparison records (all distinct values), the workers
    of all records, plus the run's sidecar `meta` (start, end, duration, exit status, workers, ...; see
    `reports.plugin`). A crash record's context is the controller's, which computed nothing (no device, often no jax):
    it is not a variant of the environment the numbers came from."""
    records = list(records)
    compared = [r for r in records if classify(r) != "worker_crash"]

    def distinct(field_: str) -> list[Any]:
        seen: dict[str, Any] = {}
        for r in compared:
            v = r.get(field_)
            seen.setdefault(json.dumps(v, sort_keys=True), v)
        return list(seen.values())

    meta = meta or {}
    run = {k: meta.get(k) for k in ("start", "end", "duration_s", "exitstatus", "workers", "jax_platforms", "args")}
    return {
        "versions": distinct("versions"),
        "platforms": distinct("platform"),
        "hypothesis_profiles": [p for p in distinct("hypothesis_profile") if p is not None]
        or ([meta["hypothesis_profile"]] if meta.get("hypothesis_profile") else []),
        "workers": sorted({str(r.get("worker")) for r in records}),
        "run": run if meta else None,
    }


def crashes(records: Iterable[Record]) -> list[Record]:
    """The worker crash records."""
    return [r for r in records if classify(r) == "worker_crash"]


def crash_name(r: Record) -> str:
    """A worker crash for people: "NODE_ID (worker gw1)", "no test (worker gw1)" for a worker lost between tests."""
    return f"{r.get('node_id') or 'no test'} (worker {r.get('worker')})"
