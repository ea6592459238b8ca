"""Command line of the report.

python -m reports summary RECORDS.jsonl     text matrix: component x pair x dtype (pass / fail / controls / ...)
python -m reports render [RECORDS.jsonl] -o DIR [--previous OLD.jsonl] [--mutations MUTATIONS.jsonl]
    report.html + summary.json (reports/render.py); --mutations adds the mutation job's score and survivors
python -m reports diff OLD.jsonl NEW.jsonl [--factor 2.0] [--floor 0.01] [--allow-removed] [--allow-crashes]
    the run-to-run gate: metric regressions, new failures, removed comparisons, worker crashes (reports/diff.py)
python -m reports history add RECORDS.jsonl --db FILE | history list --db FILE
    the run history in one SQLite file (reports/history.py); `render --history FILE` charts it (reports/trends.py)
python -m reports upstream RECORDS.jsonl [--junit JUNIT.xml] [-o OUT.md]
    the upstream drift watch (reports/upstream.py): expected divergences that now pass, comparisons and tests that now
    fail, versions against the pins, in Markdown; exits 1 when it lists anything

All of them read records with `reports.recordfile.read` and aggregate them with `reports.analysis`; render reads the
mutation job's results with `reports.mutations.read` and aggregates them with `reports.mutations.summarize`. A malformed
line is reported by number and skipped.

Exit status:
    0  done: summary and render whatever the verdicts; diff when the gate passes; upstream when nothing changed.
    1  diff's gate failed, upstream listed a change, or an input error: a records file that cannot be read, a file
       with lines but no record (a config file), an output directory that cannot be written, a history file that is
       not a usable run history (not ours, damaged, truncated, still locked by another writer; it is left as it is), a
       junit file that is not junit XML.
    2  a usage error: an unknown command or option, a missing argument, --factor <= 1, --floor < 0, render with
       neither RECORDS nor --mutations.
Errors are one line on stderr, `python -m reports COMMAND: error: ...`, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from reports import diff, history, history_cli, recordfile, render, summary, upstream

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "summary": (summary.add_arguments, summary.main, "print the text summary of a records file"),
    "render": (render.add_arguments, render.main, "write the HTML report and summary.json"),
    "diff": (diff.add_arguments, diff.main, "the run-to-run gate; exits 1 when it fails"),
    "history": (
        history_cli.add_arguments,
        history_cli.main,
        "store a run in the run history (add) or list its runs",
    ),
    "upstream": (
        upstream.add_arguments,
        upstream.main,
        "the upstream drift watch: fixed divergences, new failures, versions vs pins; exits 1 when anything changed",
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2): the message and where to read the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status (a usage error exits 2 from argument parsing)."""
    parser = _Parser(prog="python -m reports")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except OSError as e:
        problem = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
    except (recordfile.NoRecords, history.HistoryError) as e:
        problem = str(e)
    print(f"{parser.prog} {args.command}: error: {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
