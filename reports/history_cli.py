"""`python -m reports history add|list`: the command line of the run history (reports/history.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reports import analysis
from reports.history import Run, add, runs


def format_runs(runs: list[Run], db: str | os.PathLike[str]) -> str:
    """`history list`'s text: a header, one line per run (id, date, commit, platform, comparisons, fail, source)."""
    head = ("run", "date", "commit", "platform", "comparisons", "fail", "source")
    cells = [
        (
            f"#{r.id}",
            r.when(),
            r.commit or "-",
            r.platform_text(),
            str(r.counts.get("comparisons", "-")),
            str(r.counts.get("fail", "-")),
            r.source,
        )
        for r in runs
    ]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(head)]
    lines = ["  ".join(f"{t:{w}}" for t, w in zip(row, widths, strict=True)).rstrip() for row in [head, *cells]]
    return "\n".join([*lines, f"{len(runs)} run(s) in {Path(db).resolve()}"])


def main(args: argparse.Namespace) -> int:
    """`python -m reports history add|list`; exits 0 when done (an add of a stored file included)."""
    if args.action == "list":
        print(format_runs(runs(args.db), args.db))
        return 0
    run, added, warnings = add(args.db, args.records)
    for line in warnings:
        print(line)
    what = f"run #{run.id} (commit {run.commit or '-'}, {run.when()}, {analysis.headline(run.counts)})"
    if added:
        print(f"stored {what} in {Path(args.db).resolve()}")
    else:
        print(f"already stored as {what}: same records file (sha256 {run.sha256[:12]}), nothing added")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `history` command's actions (add, list) to `parser` (a subcommand parser of reports/__main__.py)."""
    actions = parser.add_subparsers(dest="action", required=True)
    add_ = actions.add_parser("add", help="store the run of a records file (a file already stored is not added again)")
    add_.add_argument("records", help="records JSONL file (reports/out/records.jsonl)")
    list_ = actions.add_parser("list", help="print the stored runs")
    for p in (add_, list_):
        p.add_argument("--db", required=True, help="the history's SQLite file (add creates it when absent)")
