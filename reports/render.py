"""The HTML drift report: `python -m reports render [RECORDS.jsonl] -o DIR [--previous OLD.jsonl] [--mutations FILE]`.

Writes DIR/report.html (one self-contained page: inline CSS, a few lines of inline JS, charts as inline SVG drawn by
matplotlib; it requests nothing over the network) and DIR/summary.json (the same content, machine-readable). The page is
rendered from `templates/report.html.j2` with jinja2's autoescaping, so record text can never inject markup.

`--mutations FILE` adds the mutation job's results (`python -m parity.harness.mutation --out FILE`, read and aggregated
by `reports.mutations`): the score per porting-bug class and per package, and every survivor with its diff. Without
RECORDS the page holds the mutation section alone (`tox -e mutation`).

`--history FILE` adds the "Run history" section from a run history (`reports.history`, filled by `python -m reports
history add`): per component x pair x dtype the worst max|d|/rms over the runs with its budget, and since which run a
metric left its band or a comparison started failing (`reports.trends`). RECORDS joins the history as "this run" when
it is not stored there yet.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2

from reports import analysis, charts, diff, history, mutations, recordfile, trends
from reports.records import jsonable

MAX_CHARTS = 60  # drift charts drawn (one per component x dtype); the page says how many more were left out
MAX_FAILURES = 300  # rows of the failing-comparisons table
MAX_HISTORY_CHARTS = 60  # run-history charts drawn, flagged series first; every series keeps its row and sentence


def build(
    records_path: str | os.PathLike[str] | None,
    *,
    previous: str | os.PathLike[str] | None = None,
    mutation_results: str | os.PathLike[str] | None = None,
    history_db: str | os.PathLike[str] | None = None,
    factor: float = 2.0,
    floor: float = 0.01,
    allow: tuple[str, ...] = (),
    per_component: int = 10,
) -> dict[str, Any]:
    """Everything the page and summary.json show, from a records file (and the previous run's, when given: the gate
    of `reports.diff`, with its `factor`, `floor` and `allow`).

    Counts and the matrix are `analysis.count` (stated by `analysis.headline`) and `analysis.matrix`, the numbers
    `python -m reports summary` prints. `records_path` None: no parity records (a page of mutation results alone);
    `mutation_results`: the mutation job's results file, summarized by `reports.mutations.summarize`; `history_db`: a
    run history (`reports.history`), shown by `reports.trends.report` with the records file as its latest run when that
    file is not stored in it.

    Raises:
        OSError: a records, mutation results or history file cannot be read.
        recordfile.NoRecords: a records file has lines but no record.
        history.HistoryError: the history file is not a usable run history.
    """
    if records_path is None:
        loaded = recordfile.Loaded(path=Path(), records=[])
    else:
        loaded = recordfile.read(records_path, require_records=True)
    mutated = None if mutation_results is None else mutations.read(mutation_results)
    old = None if previous is None else recordfile.read(previous, require_records=True)
    recs = analysis.counted(loaded.records)
    counts = analysis.count(loaded.records)
    summary: dict[str, Any] = {
        "records": None if records_path is None else str(Path(records_path).resolve()),
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "headline": analysis.headline(counts),
        "counts": counts,
        "malformed_lines": _malformed(loaded),
        "warnings": loaded.warnings(),
        "matrix": analysis.matrix(recs),
        "drift": analysis.drift(recs),
        "expected_divergences": analysis.expected_divergences(recs),
        "controls": analysis.controls(recs),
        "worker_crashes": [
            {"node_id": r.get("node_id"), "worker": r.get("worker"), "failures": r.get("failures")}
            for r in analysis.crashes(recs)
        ],
        "environment": analysis.environment(loaded.records, loaded.meta),
        "worst": {
            c: [_case(r) for r in rs] for c, rs in analysis.worst_cases(recs, per_component=per_component).items()
        },
        "failures": [_case(r) for r in recs if analysis.classify(r) == "fail"],
        "previous": None,
        "mutations": None if mutated is None else mutations.summarize(mutated),
        "history": None if history_db is None else _history(history_db, records_path),
    }
    if mutated is not None:
        summary["warnings"] += mutated.warnings()
    if old is not None:
        result = diff.compare(old.records, loaded.records, factor=factor, floor=floor, allow=allow)
        summary["previous"] = {
            "records": str(old.path.resolve()),
            "factor": factor,
            "malformed_lines": _malformed(old),
            **result,
        }
        summary["warnings"] += old.warnings()
    return summary


def _history(db: str | os.PathLike[str], records_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    runs = history.runs(db)
    rows: Iterable[history.Row] = history.rows(db, series_only=True)
    current = None
    if records_path is not None:
        run, run_rows, _ = history.load_run(records_path)
        current = run.sha256
        if all(r.sha256 != current for r in runs):
            runs, rows = [*runs, run], itertools.chain(rows, run_rows)  # the rendered run, after every stored one
    return trends.report(runs, rows, db=str(Path(db).resolve()), current=current)


def _malformed(loaded: recordfile.Loaded) -> list[dict[str, Any]]:
    return [{"line": n, "problem": p} for n, p in loaded.malformed]


def write(summary: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Writes a `build()` result as report.html (with its drift charts) and summary.json; returns report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drift_charts = analysis.drift_charts(summary["drift"])
    svgs = [charts.drift_svg(chart) for chart in drift_charts[:MAX_CHARTS]]
    trend = summary.get("history") or {"series": []}
    history_charts = [(t, charts.history_svg(t)) for t in trend["series"][:MAX_HISTORY_CHARTS]]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["ratio"] = analysis.ratio_text
    env.filters["js"] = lambda x: json.dumps(jsonable(x), indent=1, sort_keys=True)
    html = env.get_template("report.html.j2").render(
        s=summary,
        charts=list(zip(drift_charts[:MAX_CHARTS], svgs, strict=True)),
        charts_left_out=len(drift_charts) - len(svgs),
        history_charts=history_charts,
        history_charts_left_out=len(trend["series"]) - len(history_charts),
        max_failures=MAX_FAILURES,
    )
    (out / "summary.json").write_text(json.dumps(jsonable(summary, "summary"), indent=1, allow_nan=False) + "\n")
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


def _fmt(x: Any) -> str:
    return analysis.text(x, ".3g") if x is None or isinstance(x, float) else str(x)


def main(args: argparse.Namespace) -> int:
    """`python -m reports render`: writes the page, prints the skipped lines, the headline and the page's path; exits 0
    whatever the verdicts."""
    if args.records is None and args.mutations is None:
        print("python -m reports render: error: give RECORDS, --mutations FILE or both", file=sys.stderr)
        return 2
    summary = build(
        args.records,
        previous=args.previous,
        mutation_results=args.mutations,
        history_db=args.history,
        factor=args.factor,
        floor=args.floor,
        allow=diff.allowed(args),
    )
    page = write(summary, args.output)
    for line in summary["warnings"]:
        print(line)
    if args.records is not None:
        print(summary["headline"])
    if summary["history"] is not None:
        h = summary["history"]
        print(f"run history: {len(h['runs'])} run(s), {h['flagged']} of {len(h['series'])} series flagged")
        for t in h["series"]:
            if t["flagged"]:
                print(f"  {t['component']} {t['pair']} {t['dtype']}: {t['sentence']}")
    if summary["mutations"] is not None:
        print(summary["mutations"]["headline"])
    print(f"parity report: {page.resolve()}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `render` command's arguments to `parser` (a subcommand parser of reports/__main__.py)."""
    parser.add_argument("records", nargs="?", default=None, help="records JSONL file (reports/out/records.jsonl)")
    parser.add_argument("-o", "--output", default="reports/out/html", help="directory for report.html + summary.json")
    parser.add_argument("--previous", default=None, help="records of a previous run: adds a 'since previous' section")
    parser.add_argument("--mutations", default=None, help="mutation job results: adds the 'Mutation score' section")
    parser.add_argument(
        "--history", default=None, help="run history (python -m reports history add): adds the 'Run history' section"
    )
    diff.add_gate_arguments(parser)
