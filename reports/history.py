"""The run history: every run's records in one SQLite file. `python -m reports history add RECORDS.jsonl --db FILE`
stores a run, `python -m reports history list --db FILE` prints the runs; `render --history FILE` charts them
(`reports.trends` says since when a metric left its band).

A run is one records file: its commit (the sidecar's, else the records'; `reports.records.commit`), date (the sidecar's
session start, else the earliest record's time), platforms, package versions, hypothesis profile and counts
(`analysis.count`), and per counted record (`analysis.counted`: hypothesis shrink attempts are not stored) its node id,
component, pair, dtype, control, layer, stage, verdict, max|d|/rms and mae/rms (`analysis.normalized`; a non-finite
value is stored under its `NONFINITE` name, since SQLite stores a NaN REAL as NULL) and tolerance.

The file is append-only and safe to share:
- Each `add` is one transaction (`BEGIN IMMEDIATE`: one writer at a time; another waits up to `TIMEOUT_S` for the
  lock, then fails naming the file). A crash mid-add leaves SQLite's journal, which rolls the half-add back.
- A new path is created whole: the schema is written to a temporary file beside it, then hard-linked onto the path,
  which fails if another process created it meanwhile (then that one is used).
- The same records file (by the sha256 of its bytes) is stored once: adding it again is deduplicated, nothing is added
  and the command says which run holds it (exit 0, so a retried job step does not fail).
- Triggers refuse any UPDATE or DELETE of stored runs and comparisons.
- A file that is not ours is never written: every command first checks, inside its transaction, that SQLite reads the
  file (a truncated or corrupt one raises "malformed"; `add` also runs `PRAGMA quick_check`), that its
  `history_format` table names `FORMAT` at a `VERSION` this code reads, and that its tables have our columns. Any
  problem is a `HistoryError` naming the file, which is left as it was (an empty file included: no repair).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sqlite3
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from reports import analysis, recordfile
from reports.schema import json_number

FORMAT = "moshi-parity-history"
VERSION = 1
TIMEOUT_S = 60.0
"""How long `add` waits for another writer's lock before it fails."""

_COLUMNS = {
    "runs": (
        "id",
        "sha256",
        "source",
        "commit_id",
        "date",
        "added",
        "platforms",
        "versions",
        "hypothesis_profile",
        "counts",
    ),
    "comparisons": (
        "run_id",
        "node_id",
        "component",
        "pair",
        "dtype",
        "control",
        "layer",
        "stage",
        "verdict",
        "max_abs_rms",
        "mae_rms",
        "atol",
        "tolerance",
    ),
}
_SCHEMA = f"""
CREATE TABLE history_format (format TEXT NOT NULL, version INTEGER NOT NULL);
INSERT INTO history_format VALUES ('{FORMAT}', {VERSION});
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,  -- of the records file's bytes: one file is one run
    source TEXT NOT NULL,         -- the records file's absolute path when added
    commit_id TEXT,               -- git HEAD (+ "-dirty"), NULL when unknown
    date TEXT NOT NULL,           -- ISO 8601 UTC: when the run started
    added TEXT NOT NULL,          -- ISO 8601 UTC: when it was stored
    platforms TEXT NOT NULL,      -- JSON: the distinct platforms of its comparison records
    versions TEXT NOT NULL,       -- JSON: the distinct package versions of its comparison records
    hypothesis_profile TEXT,
    counts TEXT NOT NULL          -- JSON: reports.analysis.count
);
CREATE TABLE comparisons (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    node_id TEXT, component TEXT, pair TEXT, dtype TEXT, control TEXT, layer INTEGER, stage TEXT,
    verdict TEXT NOT NULL,
    max_abs_rms,  -- untyped: a float, or "NaN" / "Infinity" / "-Infinity"; NULL when unknown
    mae_rms,
    atol REAL,    -- tolerance.atol, the budget of max_abs_rms
    tolerance TEXT  -- JSON
);
CREATE INDEX comparisons_run ON comparisons (run_id);
""" + "".join(
    f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'the run history is append-only'); END;\n"
    for table in ("runs", "comparisons")
    for op in ("UPDATE", "DELETE")
)


class HistoryError(ValueError):
    """The history file cannot be used (not ours, damaged, locked, ...); the message names it. The file is untouched."""


@dataclass
class Run:
    """One stored run (`id` None: read from a records file, not stored)."""

    id: int | None
    sha256: str
    source: str
    commit: str | None
    date: str
    added: str | None = None
    platforms: list[Any] = field(default_factory=list)
    versions: list[Any] = field(default_factory=list)
    hypothesis_profile: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def short_commit(self) -> str:
        """The commit's first 7 hex digits (+ "-dirty"), "no commit" when unknown."""
        if not self.commit:
            return "no commit"
        return self.commit[:7] + ("-dirty" if self.commit.endswith("-dirty") else "")

    def when(self) -> str:
        """The date as people read it: "2026-01-02 03:04 UTC"."""
        return _utc(self.date).strftime("%Y-%m-%d %H:%M UTC")

    def platform_text(self) -> str:
        """The first platform's backend/device kind ("cpu/cpu", "gpu/NVIDIA H200"), "+N" more variants."""
        if not self.platforms:
            return "-"
        p = self.platforms[0] if isinstance(self.platforms[0], dict) else {}
        more = f" +{len(self.platforms) - 1}" if len(self.platforms) > 1 else ""
        return f"{p.get('backend')}/{p.get('device_kind')}{more}"


class Row(NamedTuple):
    """One stored comparison (`run_id` None: not stored). Metrics are floats (non-finite included) or None."""

    run_id: int | None
    node_id: str | None
    component: str | None
    pair: str | None
    dtype: str | None
    control: str | None
    layer: int | None
    stage: str | None
    verdict: str
    max_abs_rms: float | None
    mae_rms: float | None
    atol: float | None
    tolerance: str | None


def load_run(records_path: str | os.PathLike[str]) -> tuple[Run, list[Row], list[str]]:
    """A records file as a run (not stored): the run, its rows and warnings (skipped lines, disagreeing commits).

    Raises:
        OSError: the file cannot be read.
        recordfile.NoRecords: it has lines but no record.
    """
    path = Path(records_path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = recordfile.read(path, require_records=True)
    warnings = loaded.warnings()
    meta = loaded.meta or {}
    recs = analysis.counted(loaded.records)
    compared = [r for r in recs if analysis.classify(r) != "worker_crash"]
    commits = Counter(r.get("commit") for r in compared if r.get("commit"))
    if "commit" in meta:
        commit = meta["commit"] if isinstance(meta["commit"], str) else None
    else:
        commit = min(commits, key=lambda c: (-commits[c], c)) if commits else None
        if len(commits) > 1:
            warnings.append(f"{path}: the records name {len(commits)} commits {sorted(commits)}; stored {commit}")
    times = [r["time"] for r in loaded.records if isinstance(r.get("time"), str)]
    start = meta.get("start") if isinstance(meta.get("start"), str) else None
    date = _iso(start or (min(times, key=_utc) if times else None) or _now())
    env = analysis.environment(loaded.records, meta)
    run = Run(
        id=None,
        sha256=sha256,
        source=str(path.resolve()),
        commit=commit,
        date=date,
        platforms=env["platforms"] or ([meta["platform"]] if isinstance(meta.get("platform"), dict) else []),
        versions=env["versions"] or ([meta["versions"]] if isinstance(meta.get("versions"), dict) else []),
        hypothesis_profile=(env["hypothesis_profiles"] or [None])[0],
        counts=analysis.count(loaded.records),
    )
    return run, [_row(r) for r in recs], warnings


def _row(r: analysis.Record) -> Row:
    tol = r.get("tolerance")
    crash = r.get("pair") is None
    return Row(
        run_id=None,
        node_id=r.get("node_id"),
        component=r.get("component"),
        pair=None if crash else analysis.pair_name(r),
        dtype=None if crash and r.get("dtypes") is None else analysis.dtype_name(r),
        control=r.get("control"),
        layer=r.get("layer"),
        stage=r.get("stage"),
        verdict=str(r.get("verdict")),
        max_abs_rms=analysis.normalized(r),
        mae_rms=analysis.normalized(r, "mae"),
        atol=analysis.num((tol or {}).get("atol")),
        tolerance=None if tol is None else json.dumps(tol, sort_keys=True),
    )


def add(
    db: str | os.PathLike[str], records_path: str | os.PathLike[str], *, timeout: float = TIMEOUT_S
) -> tuple[Run, bool, list[str]]:
    """Stores the run of a records file in `db` (created when absent).

    Returns:
        (the stored run, whether it was added: False when the same file was already stored, then the earlier run,
        warnings of `load_run`).

    Raises:
        OSError, recordfile.NoRecords: the records file (see `load_run`).
        HistoryError: `db` is not a usable history, or stayed locked for `timeout` seconds.
    """
    run, rows, warnings = load_run(records_path)
    db = Path(db)
    if not db.exists():
        _create(db)
    with _transaction(db, write=True, timeout=timeout) as conn:
        found = conn.execute("SELECT * FROM runs WHERE sha256 = ?", (run.sha256,)).fetchone()
        if found is not None:
            return _run(found), False, warnings
        run.added = _now()
        cur = conn.execute(
            f"INSERT INTO runs ({', '.join(_COLUMNS['runs'][1:])}) VALUES ({', '.join('?' * 9)})",
            (
                run.sha256,
                run.source,
                run.commit,
                run.date,
                run.added,
                json.dumps(run.platforms, sort_keys=True),
                json.dumps(run.versions, sort_keys=True),
                run.hypothesis_profile,
                json.dumps(run.counts, sort_keys=True),
            ),
        )
        run.id = cur.lastrowid
        conn.executemany(
            f"INSERT INTO comparisons VALUES ({', '.join('?' * len(_COLUMNS['comparisons']))})",
            [(run.id, *row[1:9], _stored(row.max_abs_rms), _stored(row.mae_rms), *row[11:]) for row in rows],
        )
    return run, True, warnings


def runs(db: str | os.PathLike[str]) -> list[Run]:
    """The stored runs in date order (then id); reads only.

    Raises:
        FileNotFoundError: `db` does not exist.
        HistoryError: `db` is not a usable history (it is not modified).
    """
    with _transaction(Path(db), write=False, timeout=TIMEOUT_S) as conn:
        found = [_run(row) for row in conn.execute("SELECT * FROM runs")]
    return sorted(found, key=lambda r: (_utc(r.date), r.id or 0))


def rows(db: str | os.PathLike[str], *, series_only: bool = False) -> Iterator[Row]:
    """The stored comparisons in the order they were added, streamed (a year of nightly runs is millions of rows);
    `series_only`: only those `reports.trends` charts (no negative controls, verdict pass or fail). Reads only.

    Raises:
        FileNotFoundError, HistoryError: as `runs`, when iteration starts.
    """
    where = " WHERE control IS NULL AND verdict IN ('pass', 'fail')" if series_only else ""
    with _transaction(Path(db), write=False, timeout=TIMEOUT_S) as conn:
        for row in conn.execute(f"SELECT * FROM comparisons{where} ORDER BY rowid"):
            yield Row(*row[:9], analysis.num(row[9]), analysis.num(row[10]), *row[11:])


def _run(row: sqlite3.Row | tuple[Any, ...]) -> Run:
    d = dict(zip(_COLUMNS["runs"], row, strict=True))
    return Run(
        id=d["id"],
        sha256=d["sha256"],
        source=d["source"],
        commit=d["commit_id"],
        date=d["date"],
        added=d["added"],
        platforms=json.loads(d["platforms"]),
        versions=json.loads(d["versions"]),
        hypothesis_profile=d["hypothesis_profile"],
        counts=json.loads(d["counts"]),
    )


def _stored(x: float | None) -> float | str | None:
    return None if x is None else json_number(x)


def _create(db: Path) -> None:
    """Creates a complete, empty history at `db` unless another process got there first (then theirs is kept)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.", suffix=".tmp")
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(f"BEGIN;\n{_SCHEMA}COMMIT;")
        finally:
            conn.close()
        os.chmod(tmp, 0o644)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, db)
    finally:
        os.unlink(tmp)


@contextlib.contextmanager
def _transaction(db: Path, *, write: bool, timeout: float) -> Iterator[sqlite3.Connection]:
    """A checked transaction on `db`: committed when the block ends, rolled back on an error; every SQLite error is a
    `HistoryError` naming the file."""
    if not db.exists():
        raise FileNotFoundError(2, "No such file or directory", str(db))
    if db.is_file() and db.stat().st_size == 0:
        raise HistoryError(f"{db}: an empty file, not a run history (left as it is; give a new path)")
    uri = f"file:{urllib.parse.quote(str(db.resolve()))}?mode={'rw' if write else 'ro'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as e:
        raise HistoryError(f"{db}: cannot open: {e}") from e
    try:
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            _check(conn, db, thorough=write)
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as e:
        text = str(e)
        if "locked" in text or "busy" in text:
            raise HistoryError(f"{db}: still locked by another writer after {timeout:g} s ({e})") from e
        if "malformed" in text or "not a database" in text or not isinstance(e, sqlite3.OperationalError):
            raise HistoryError(f"{db}: {_damage(db, e)}") from e
        raise HistoryError(f"{db}: {e}") from e
    finally:
        conn.close()


def _check(conn: sqlite3.Connection, db: Path, *, thorough: bool) -> None:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "history_format" not in tables:
        shown = ", ".join(sorted(tables)) or "none"
        raise HistoryError(
            f"{db}: an SQLite database but not a parity run history (no history_format table; tables: "
            f"{shown}); left as it is"
        )
    found = conn.execute("SELECT format, version FROM history_format").fetchall()
    if len(found) != 1 or found[0][0] != FORMAT:
        raise HistoryError(f"{db}: history_format holds {found}, not one {FORMAT!r} row: not a parity run history")
    if found[0][1] != VERSION:
        raise HistoryError(f"{db}: run history version {found[0][1]!r}; this code reads version {VERSION}")
    for table, columns in _COLUMNS.items():
        have = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        if have != columns:
            raise HistoryError(f"{db}: table {table} has columns {have}, a version {VERSION} history has {columns}")
    if thorough:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise HistoryError(f"{db}: damaged ({'; '.join(problems[:3])}); left as it is, restore it from a copy")


def _damage(db: Path, e: sqlite3.DatabaseError) -> str:
    """What is wrong with a file SQLite cannot read, from its error and header."""
    try:
        with open(db, "rb") as f:
            head = f.read(100)
        size = db.stat().st_size
    except OSError:
        return str(e)
    if not head.startswith(b"SQLite format 3\0"):
        return f"not an SQLite database, so not a parity run history ({e}); left as it is"
    page = int.from_bytes(head[16:18], "big") if len(head) >= 18 else 0
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big") if len(head) >= 32 else 0
    truncated = ""
    if len(head) < 100 or (head[24:28] == head[92:96] and pages and size < page * pages):
        truncated = f", truncated: its header says {page * pages} bytes, the file has {size}"
    return f"a damaged SQLite file ({e}{truncated}); left as it is, restore it from a copy"


def _iso(text: str) -> str:
    return _utc(text).isoformat(timespec="seconds")


def _utc(text: str) -> datetime.datetime:
    t = datetime.datetime.fromisoformat(text)
    return t.replace(tzinfo=datetime.UTC) if t.tzinfo is None else t.astimezone(datetime.UTC)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
