"""Plain-text summary of a records file: `python -m reports summary RECORDS.jsonl`.

Prints the rows of `reports.analysis.matrix`, the same rows the HTML report's matrix and summary.json show: per
component x implementation pair x dtype, the pair's tolerance class, how many comparisons passed, failed, were
negative controls (flagging a control that did not fail) or documented upstream divergences, the worst
max|diff| / rms(reference), NaN worst of all, and the worst metric as a fraction of its budget (`analysis.budget_ratio`,
"0.42x"; "!" marks one over 1); then the run's counts (`analysis.headline`: hypothesis shrink attempts are
not counted), each worker crash by test, and the malformed lines skipped.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reports import analysis, recordfile

COLUMNS = (("component", 16), ("pair", 20), ("class", 17), ("dtype", 9))
"""The text columns and their least widths; a column widens to its longest value so rows stay aligned."""


def render_text(path: str | os.PathLike[str]) -> str:
    """The summary of the records file at `path`: a header, one line per matrix row, the run's `analysis.headline`,
    one line per worker crash naming its test, and one line per malformed line skipped.

    Raises:
        OSError: the file cannot be read.
        recordfile.NoRecords: the file has lines but no record.
    """
    loaded = recordfile.read(path, require_records=True)
    counts = analysis.count(loaded.records)
    rows = analysis.matrix(analysis.counted(loaded.records))
    texts = [(row["component"], row["pair"], row["pair_class"] or "-", row["dtype"]) for row in rows]
    widths = [max([least, *(len(t[i]) for t in texts)]) for i, (_, least) in enumerate(COLUMNS)]
    head = " ".join(f"{name:{w}}" for (name, _), w in zip(COLUMNS, widths, strict=True))
    out = [f"{head} {'pass':>5} {'fail':>5} {'ctrl':>5} {'xdiv':>5} {'worst|d|/rms':>13} {'worst/budget':>12}"]
    for row, text in zip(rows, texts, strict=True):
        flag = "  <- a negative control passed" if row["controls_not_failing"] else ""
        worst = analysis.text(row["worst"], ".2e")
        ratio = analysis.ratio_text(row["budget_ratio"]) + ("!" if row["over_budget"] else " ")
        out.append(
            " ".join(f"{t:{w}}" for t, w in zip(text, widths, strict=True))
            + f" {row['pass']:5} {row['fail']:5} {row['controls']:5} {row['expected_divergence']:5} {worst:>13}"
            + f" {ratio:>12}{flag}"
        )
    out.append(f"{analysis.headline(counts)} from {Path(path).resolve()}")
    out += [f"worker crash: {analysis.crash_name(r)}" for r in analysis.crashes(loaded.records)]
    return "\n".join([*out, *loaded.warnings()])


def main(args: argparse.Namespace) -> int:
    """`python -m reports summary`: prints `render_text`; exits 0 whatever the verdicts."""
    print(render_text(args.records))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `summary` command's arguments to `parser` (a subcommand parser of reports/__main__.py)."""
    parser.add_argument("records", help="records JSONL file (reports/out/records.jsonl)")
