"""Command line of the report.

python -m reports summary RECORDS.jsonl     text matrix: component x pair x dtype (pass / fail / controls / ...)
python -m reports render RECORDS.jsonl -o DIR [--previous OLD.jsonl]   report.html + summary.json (reports/render.py)
python -m reports diff OLD.jsonl NEW.jsonl [--factor 2.0] [--floor 0.01]   metric regressions; exits 1 on any
    (reports/diff.py)

All three read records with `reports.recordfile.read` and aggregate them with `reports.analysis`; summary and render
exit 0 whatever the verdicts, diff exits 1 on a regression or a new failure.
"""

from __future__ import annotations

import argparse
import sys

from reports import diff, render
from reports.summary import render_text


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status."""
    parser = argparse.ArgumentParser(prog="python -m reports")
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="print the text summary of a records file")
    summary.add_argument("records")
    render.add_arguments(sub.add_parser("render", help="write the HTML report and summary.json"))
    diff.add_arguments(sub.add_parser("diff", help="per-metric regressions between two runs; exits 1 on any"))
    args = parser.parse_args(argv)
    if args.command == "summary":
        print(render_text(args.records))
        return 0
    if args.command == "render":
        return render.main(args)
    return diff.main(args)


if __name__ == "__main__":
    sys.exit(main())
