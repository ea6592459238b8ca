"""Plain-text summary of a records file: one row per component x implementation pair x dtype.

`python -m reports summary RECORDS.jsonl` prints, per row, how many comparisons passed, failed, were negative controls
(and whether each failed as it must) or documented upstream divergences, and the worst max|diff| / rms(reference).
Hypothesis replays a failing example many times while shrinking; only the final replay of each test counts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def _final(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Drops the shrink attempts of a failing hypothesis test, keeping its final replay."""
    finals = {r["node_id"] for r in records if (r.get("hypothesis") or {}).get("is_final")}
    return [r for r in records if r.get("node_id") not in finals or (r.get("hypothesis") or {}).get("is_final")]


def table(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"pass": 0, "fail": 0, "controls": 0, "controls_not_failing": 0, "divergences": 0, "worst": 0.0}
    )
    for r in _final(list(records)):
        if r.get("verdict") == "worker_crash":
            continue
        pair = "{reference}->{candidate}".format(**r["pair"])
        row = rows[(r["component"], pair, (r.get("dtypes") or {}).get("expected", "?"))]
        if r.get("control"):
            row["controls"] += 1
            row["controls_not_failing"] += r["verdict"] == "pass"
        elif r["verdict"] == "expected_divergence":
            row["divergences"] += 1
        else:
            row[r["verdict"] if r["verdict"] in ("pass", "fail") else "fail"] += 1
            m = r.get("metrics") or {}
            if isinstance(m.get("max_abs"), float) and m.get("ref_rms"):
                row["worst"] = max(row["worst"], m["max_abs"] / m["ref_rms"])
    return [{"component": c, "pair": p, "dtype": d, **v} for (c, p, d), v in sorted(rows.items())]


def render_text(path: str | Path) -> str:
    lines = Path(path).read_text().splitlines()
    records, bad = [], []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(number)
    out = [
        f"{'component':16} {'pair':20} {'dtype':9} {'pass':>5} {'fail':>5} {'ctrl':>5} {'xdiv':>5} {'worst|d|/rms':>13}"
    ]
    for row in table(records):
        flag = "  <- a negative control passed" if row["controls_not_failing"] else ""
        out.append(
            f"{row['component']:16} {row['pair']:20} {row['dtype']:9} {row['pass']:5} {row['fail']:5} "
            f"{row['controls']:5} {row['divergences']:5} {row['worst']:13.2e}{flag}"
        )
    crashes = sum(r.get("verdict") == "worker_crash" for r in records)
    out.append(
        f"{len(records)} records from {Path(path).resolve()}" + (f"; {crashes} worker crash(es)" if crashes else "")
    )
    if bad:
        out.append(f"skipped malformed lines: {bad}")
    return "\n".join(out)
