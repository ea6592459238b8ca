"""A records file on disk: where its session sidecar lives, and `read()`, the one reader every view uses.

`reports.plugin` writes `records.jsonl` (one record per line) and its sidecar `records.meta.json`. The text summary,
the HTML report, the run diff and the plugin's own closing counts all read a records file through `read()`, so they
see the same records and skip the same lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.validate import validate


def meta_path(records_path: str | os.PathLike[str]) -> Path:
    """The session sidecar of a records file: records.jsonl -> records.meta.json."""
    return Path(records_path).with_suffix(".meta.json")


@dataclass
class Loaded:
    """A records file read leniently.

    Attributes:
        path: the file, as given.
        records: the lines that hold a valid record, in file order.
        malformed: (line number, problem) for every other non-blank line.
        meta: the parsed sidecar, or None when it is absent or not JSON.
    """

    path: Path
    records: list[dict[str, Any]]
    malformed: list[tuple[int, str]] = field(default_factory=list)
    meta: dict[str, Any] | None = None

    def warnings(self) -> list[str]:
        """One line per skipped line, `PATH:LINE: skipped malformed line: PROBLEM`, as the commands print them."""
        return [f"{self.path}:{n}: skipped malformed line: {problem}" for n, problem in self.malformed]


def read(path: str | os.PathLike[str]) -> Loaded:
    """Reads a records JSONL file and its sidecar; never raises on a bad line.

    A line that is not JSON (a truncated write, garbage) or not a valid record (`reports.validate.validate`) is listed
    in `malformed` with its problem and skipped, so one bad line neither hides the rest of a run nor reaches the
    aggregation as a half-record. Records lacking a field added to the schema later (`schema.ADDED_FIELDS`) are valid.

    Raises:
        OSError: the records file itself cannot be opened.
    """
    path = Path(path)
    out = Loaded(path=path, records=[])
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                out.malformed.append((n, f"not JSON: {e.msg} at column {e.colno}"))
                continue
            problems = validate(record)
            if problems:
                shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
                out.malformed.append((n, f"not a parity record: {shown}"))
                continue
            out.records.append(record)
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        meta = None
    out.meta = meta if isinstance(meta, dict) else None
    return out
