"""Plain-text summary of a records file: `python -m reports summary RECORDS.jsonl`.

Prints the rows of `reports.analysis.matrix`, the same rows the HTML report's matrix and summary.json show: per
component x implementation pair x dtype, the pair's tolerance class, how many comparisons passed, failed, were
negative controls (flagging a control that did not fail) or documented upstream divergences, and the worst
max|diff| / rms(reference), NaN worst of all. Hypothesis shrink attempts are not counted (`analysis.counted`).
"""

from __future__ import annotations

import os
from pathlib import Path

from reports import analysis, recordfile

COLUMNS = (("component", 16), ("pair", 20), ("class", 17), ("dtype", 9))
"""The text columns and their least widths; a column widens to its longest value so rows stay aligned."""


def render_text(path: str | os.PathLike[str]) -> str:
    """The summary of the records file at `path`: a header, one line per matrix row, a closing line, and one line per
    malformed line skipped."""
    loaded = recordfile.read(path)
    counts = analysis.count(loaded.records)
    rows = analysis.matrix(analysis.counted(loaded.records))
    texts = [(row["component"], row["pair"], row["pair_class"] or "-", row["dtype"]) for row in rows]
    widths = [max([least, *(len(t[i]) for t in texts)]) for i, (_, least) in enumerate(COLUMNS)]
    head = " ".join(f"{name:{w}}" for (name, _), w in zip(COLUMNS, widths, strict=True))
    out = [f"{head} {'pass':>5} {'fail':>5} {'ctrl':>5} {'xdiv':>5} {'worst|d|/rms':>13}"]
    for row, text in zip(rows, texts, strict=True):
        flag = "  <- a negative control passed" if row["controls_not_failing"] else ""
        worst = analysis.text(row["worst"], ".2e")
        out.append(
            " ".join(f"{t:{w}}" for t, w in zip(text, widths, strict=True))
            + f" {row['pass']:5} {row['fail']:5} {row['controls']:5} {row['expected_divergence']:5} {worst:>13}{flag}"
        )
    notes = [f"{counts['worker_crash']} worker crash(es)"] if counts["worker_crash"] else []
    if counts["shrink_attempts"]:
        notes.append(f"{counts['shrink_attempts']} hypothesis shrink attempt(s) not counted")
    out.append(f"{counts['total']} records from {Path(path).resolve()}" + "".join(f"; {n}" for n in notes))
    return "\n".join([*out, *loaded.warnings()])
