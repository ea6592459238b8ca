"""Command line of the report.

python -m reports summary RECORDS.jsonl     text matrix: component x pair x dtype (pass / fail / controls / ...)
python -m reports render RECORDS.jsonl -o DIR   the HTML drift report: NOT YET IMPLEMENTED (exits 2)
"""

from __future__ import annotations

import argparse
import sys

from reports.summary import render_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports")
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="print the text summary of a records file")
    summary.add_argument("records")
    render = sub.add_parser("render", help="render the HTML report (not yet implemented)")
    render.add_argument("records")
    render.add_argument("-o", "--output", default="reports/out/html")
    args = parser.parse_args(argv)
    if args.command == "summary":
        print(render_text(args.records))
        return 0
    print("render: not yet implemented (the HTML drift report is its own issue); use `summary`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
