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


class NoRecords(ValueError):
    """A file with lines, none of which is a record: not a records file (a config file, the wrong path)."""


def read(path: str | os.PathLike[str], *, require_records: bool = False) -> Loaded:
    """Reads a records JSONL file and its sidecar; never raises on a bad line.

    A line that is not JSON (a truncated write, garbage) or not a valid record (`reports.validate.validate`) is listed
    in `malformed` with its problem and skipped, so one bad line neither hides the rest of a run nor reaches the
    aggregation as a half-record. Records lacking a field added to the schema later (`schema.ADDED_FIELDS`) are valid.

    Args:
        path: the records file.
        require_records: raise `NoRecords` when the file has non-blank lines but not one record among them (an empty
            file is a run that recorded nothing, and reads as such).

    Raises:
        OSError: the records file itself cannot be opened.
        NoRecords: see `require_records`; the message names the file and its first line's problem.
    """
    path = Path(path)
    out = Loaded(path=path, records=[])
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:  # without its newline, a cut-off line reads "Unterminated string", not "Invalid control character"
                record = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                # some messages end in "at" ("Unterminated string starting at"): say the column once
                out.malformed.append((n, f"not JSON: {e.msg.removesuffix(' at')} at column {e.colno}"))
                continue
            problems = validate(record)
            if problems:
                shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
                out.malformed.append((n, f"not a parity record: {shown}"))
                continue
            out.records.append(record)
    if require_records and out.malformed and not out.records:
        n, problem = out.malformed[0]
        raise NoRecords(f"{path}: no parity record in {len(out.malformed)} non-blank line(s); line {n}: {problem}")
    try:
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        meta = None
    out.meta = meta if isinstance(meta, dict) else None
    return out
