"""The HTML drift report: `python -m reports render RECORDS.jsonl -o DIR [--previous OLD.jsonl]`.

Writes DIR/report.html (one self-contained page: inline CSS, a few lines of inline JS, charts as inline SVG drawn by
matplotlib; it requests nothing over the network) and DIR/summary.json (the same content, machine-readable). The page is
rendered from `templates/report.html.j2` with jinja2's autoescaping, so record text can never inject markup.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

import jinja2

from reports import analysis, charts, diff

MAX_CHARTS = 60  # drift charts drawn; more runs are listed in summary.json and the page says how many were left out
MAX_FAILURES = 300  # rows of the failing-comparisons table


def build(
    records_path: str | os.PathLike[str],
    *,
    previous: str | os.PathLike[str] | None = None,
    factor: float = 2.0,
    per_component: int = 10,
) -> dict[str, Any]:
    """Everything the page and summary.json show, from a records file (and the previous run's, when given)."""
    loaded = analysis.read(records_path)
    recs = analysis.counted(loaded.records)
    summary: dict[str, Any] = {
        "records": str(Path(records_path).resolve()),
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "counts": analysis.count(loaded.records),
        "counted_after_hypothesis_dedupe": len(recs),
        "malformed_lines": [{"line": n, "problem": p} for n, p in loaded.malformed],
        "matrix": analysis.matrix(recs),
        "drift": analysis.drift(recs),
        "expected_divergences": analysis.expected_divergences(recs),
        "controls": analysis.controls(recs),
        "worker_crashes": [
            {"node_id": r.get("node_id"), "worker": r.get("worker"), "failures": r.get("failures")}
            for r in analysis.crashes(loaded.records)
        ],
        "environment": analysis.environment(loaded),
        "worst": {
            c: [_case(r) for r in rs] for c, rs in analysis.worst_cases(recs, per_component=per_component).items()
        },
        "failures": [_case(r) for r in recs if r.get("verdict") == "fail" and not r.get("control")],
        "previous": None,
    }
    if previous is not None:
        old = analysis.read(previous)
        result = diff.compare(old.records, loaded.records, factor=factor)
        summary["previous"] = {
            "records": str(Path(previous).resolve()),
            "factor": factor,
            "malformed_lines": [{"line": n, "problem": p} for n, p in old.malformed],
            **result,
        }
    return summary


def render(
    records_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    previous: str | os.PathLike[str] | None = None,
    factor: float = 2.0,
) -> Path:
    """Writes report.html and summary.json into out_dir; returns the path of report.html."""
    summary = build(records_path, previous=previous, factor=factor)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart_runs = summary["drift"][:MAX_CHARTS]
    svgs = [charts.drift_svg(run, title=_chart_title(run)) for run in chart_runs]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["js"] = lambda x: json.dumps(_jsonsafe(x), indent=1, sort_keys=True)
    html = env.get_template("report.html.j2").render(
        s=summary, charts=list(zip(chart_runs, svgs, strict=True)), charts_left_out=len(summary["drift"]) - len(svgs)
    )
    (out / "summary.json").write_text(json.dumps(_jsonsafe(summary), indent=1, allow_nan=False) + "\n")
    page = out / "report.html"
    page.write_text(html, encoding="utf-8")
    return page


def _case(r: analysis.Record) -> dict[str, Any]:
    hyp = r.get("hypothesis") or {}
    return {
        "node_id": r.get("node_id"),
        "component": r.get("component"),
        "pair": analysis.pair_name(r),
        "dtype": analysis.dtype_name(r),
        "dtypes": r.get("dtypes"),
        "layer": r.get("layer"),
        "stage": r.get("stage"),
        "verdict": r.get("verdict"),
        "max_abs_rms": analysis.normalized(r),
        "mae_rms": analysis.normalized(r, "mae"),
        "metrics": r.get("metrics"),
        "tolerance": r.get("tolerance"),
        "config": r.get("config"),
        "shapes": r.get("shapes"),
        "inputs": r.get("inputs"),
        "failures": r.get("failures") or [],
        "reproduce": hyp.get("reproduce"),
        "example": {k: v for k, v in hyp.items() if k not in ("reproduce", "is_final")} or None,
        "worker": r.get("worker"),
    }


def _chart_title(run: dict[str, Any]) -> str:
    control = f" control={run['control']}" if run["control"] else ""
    return f"{run['component']} {run['pair']} {run['dtype']}{control}"


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if math.isfinite(x) else str(x)
    return str(x)


def _jsonsafe(x: Any) -> Any:
    """Non-finite floats as the records' strings ("NaN", "Infinity"), so summary.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {str(k): _jsonsafe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonsafe(v) for v in x]
    return x


def main(args: argparse.Namespace) -> int:
    page = render(args.records, args.output, previous=args.previous, factor=args.factor)
    summary = json.loads((page.parent / "summary.json").read_text())
    for item in summary["malformed_lines"]:
        print(f"{args.records}:{item['line']}: skipped malformed line: {item['problem']}")
    if summary["worker_crashes"]:
        print(f"{len(summary['worker_crashes'])} worker crash record(s); see the report")
    print(f"parity report: {page.resolve()}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", help="records JSONL file (reports/out/records.jsonl)")
    parser.add_argument("-o", "--output", default="reports/out/html", help="directory for report.html + summary.json")
    parser.add_argument("--previous", default=None, help="records of a previous run: adds a 'since previous' section")
    parser.add_argument("--factor", type=float, default=2.0, help="regression factor for the previous-run section")
