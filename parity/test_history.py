"""The run history (`python -m reports history add|list`, `render --history`) and the commit the records carry, from
synthetic records written here: no model runs.

The rule under test (`reports.trends`): a series is failing since the first run of the failing streak that ends with
the latest run; it left its band at the earliest run from which every run is non-finite, over budget, or above 2x the
median of the runs before it (floored at 1% of the budget).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from parity.harness.record_cases import fixture, rec, write
from reports import history, plugin, recordfile, records, schema, trends
from reports.__main__ import main as cli
from reports.validate import validate

REPO = Path(__file__).resolve().parents[1]
COMMITS = ("a" * 40, "b" * 40, "c" * 40)
DATES = ("2026-01-01", "2026-01-02", "2026-01-03")


def _run(i: int, per_run: dict[str, tuple[Any, ...]], *, commit: bool = True) -> list[dict[str, Any]]:
    """The records of run i (0-based): one record per component, its error and verdict from `per_run[component][i]`
    (a number: a pass with that max|d|/rms; ("fail", x): a failure), plus a negative control and an expected divergence
    that must stay out of every series."""
    out = []
    for component, values in per_run.items():
        v = values[i]
        verdict, err = v if isinstance(v, tuple) else ("pass", v)
        out.append(rec(component, verdict=verdict, max_abs=err))
    out.append(rec("gating_mlp", control="no_gate", verdict="fail", max_abs=0.5))
    out.append(rec("rope", verdict="expected_divergence", expected_divergence="HF theta", max_abs=0.2))
    for r in out:
        r["time"] = f"{DATES[i]}T00:00:00.000+00:00"
        if commit:
            r["commit"] = COMMITS[i]
        assert validate(r) == []
    return out


RUNS = {
    "gating_mlp": (1e-7, 5e-6, 5e-6),  # grows at run 2 and stays: named
    "attention": (1e-7, 1e-7, ("fail", 3e-4)),  # fails from run 3: named
    "rmsnorm": (1e-7, 1e-7, 1e-7),  # flat: negative control
    "rope": (1e-7, 5e-6, 1e-7),  # jumps at run 2 and comes back: negative control
    "flexible_linear": (1e-7, ("fail", 3e-4), 1e-7),  # failed once and was fixed: negative control
    "lm_hidden": (0.0, 1e-9, 1e-9),  # 0 -> 1e-9 of a 1e-5 budget, under the floor: negative control
}
WITHIN = "within its band over 3 run(s)"


def _history(tmp_path: Path, runs: range = range(3)) -> tuple[Path, list[Path]]:
    db = tmp_path / "history.sqlite"
    files = [write(tmp_path / f"run{i}.jsonl", _run(i, RUNS)) for i in range(3)]
    for i in runs:
        assert cli(["history", "add", str(files[i]), "--db", str(db)]) == 0
    return db, files


def test_three_runs_name_the_run_where_a_metric_grew_and_where_failing_began(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, files = _history(tmp_path)
    assert cli(["render", str(files[2]), "--history", str(db), "-o", str(tmp_path / "html")]) == 0
    out = capsys.readouterr().out
    h = json.loads((tmp_path / "html" / "summary.json").read_text())["history"]
    said = {t["component"]: t["sentence"] for t in h["series"]}
    assert said["gating_mlp"] == (
        "worst max|d|/rms left its band at run #2 (commit bbbbbbb, 2026-01-02 00:00 UTC): 5e-06, above 2x the median "
        "1e-07 of the 1 run(s) before it (budget 1e-05)"
    )
    this = "run #3 (this run; commit ccccccc, 2026-01-03 00:00 UTC)"
    assert said["attention"] == (
        f"failing since {this} (1 run(s) in a row); worst max|d|/rms left its band at {this}: 0.0003, over its budget "
        "1e-05"
    )
    for control in ("rmsnorm", "rope", "flexible_linear", "lm_hidden"):
        assert said[control] == WITHIN, control
    assert set(said) == set(RUNS)  # the negative control and the expected divergence form no series
    assert [t["component"] for t in h["series"][:2]] == ["attention", "gating_mlp"]  # flagged first
    assert h["flagged"] == 2 and [r["id"] for r in h["runs"]] == [1, 2, 3]
    band = next(t for t in h["series"] if t["component"] == "gating_mlp")["left_band"]
    assert (band["run"]["commit"], band["run"]["date"]) == (COMMITS[1], "2026-01-02T00:00:00+00:00")

    assert "run history: 3 run(s), 2 of 6 series flagged" in out
    assert f"  gating_mlp hf->flax float32: {said['gating_mlp']}" in out.splitlines()
    html = (tmp_path / "html" / "report.html").read_text()
    section = html.split('id="history"')[1].split('id="matrix"')[0]
    assert section.count("<svg") == len(RUNS)  # one chart per component x pair x dtype
    assert said["gating_mlp"] in section and "bbbbbbb" in section and "2026-01-02" in section
    assert section.count(WITHIN) == 2 * 4  # table row and chart summary of each negative control


def test_an_unstored_records_file_is_this_run(tmp_path: Path) -> None:
    """render --history with a records file not yet added shows it as the latest run, not stored."""
    db, files = _history(tmp_path, range(2))
    assert cli(["render", str(files[2]), "--history", str(db), "-o", str(tmp_path / "html")]) == 0
    h = json.loads((tmp_path / "html" / "summary.json").read_text())["history"]
    assert [r["id"] for r in h["runs"]] == [1, 2, None]
    attention = next(t for t in h["series"] if t["component"] == "attention")
    assert attention["sentence"].startswith(
        "failing since this run, not stored (commit ccccccc, 2026-01-03 00:00 UTC) (1 run(s) in a row)"
    )
    assert len(history.runs(db)) == 2  # rendering stores nothing


def _points(values: list[Any], budget: float = 1e-5) -> list[dict[str, Any]]:
    out = []
    for i, v in enumerate(values):
        failing, worst = (True, v[1]) if isinstance(v, tuple) else (False, v)
        out.append({"run": {"label": f"#{i + 1}"}, "worst": worst, "budget": budget, "failing": failing})
    return out


@pytest.mark.parametrize(
    ("values", "band", "failing"),
    [
        ([1e-7, 1e-7, 1e-7, 1e-7], None, None),
        ([1e-7, 5e-6, 5e-6], "#2", None),
        ([1e-7, 5e-6, 1e-7], None, None),  # came back
        ([1e-7, 1.9e-7, 1.9e-7], None, None),  # under 2x the median
        ([1e-7, 1e-7, 2e-7, 3e-7, 3e-7], "#4", None),  # the median of the runs before #4 is 1e-7
        ([1.0, 1.5, 2.25, 3.4, 5.0], "#1", None),  # over the budget from the first run
        ([0.0, 1e-9, 5e-8, 5e-8], None, None),  # under 1% of the budget: noise
        ([0.0, 0.0, 3e-7, 3e-7], "#3", None),  # 3% of the budget from exactly 0: not noise
        ([1e-7, 1e-7, math.nan], "#3", None),  # not finite
        ([1e-7, ("fail", 3e-4), 1e-7], None, None),  # fixed
        ([("fail", 3e-4), 1e-7, ("fail", 3e-4), ("fail", 3e-4)], "#3", "#3"),
        ([1e-7, ("fail", None), ("fail", None)], None, "#2"),  # no number (a shape mismatch): the verdict says it
    ],
)
def test_since_when_rule(values: list[Any], band: str | None, failing: str | None) -> None:
    points = _points(values)
    found_band, found_failing = trends.left_band(points), trends.failing_since(points)
    assert (found_band and found_band["run"]["label"]) == band
    assert (found_failing and found_failing["run"]["label"]) == failing


def _count(db: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_add_creates_the_file_stores_every_field_and_deduplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh path (folder included) is created; each counted record becomes a row (hypothesis shrink attempts are
    not stored), NaN included; adding the same file again adds nothing and names the run that holds it; stored rows
    cannot be changed."""
    recs = fixture()
    recs[0]["metrics"].update(max_abs="NaN")
    src = write(tmp_path / "r.jsonl", recs)
    db = tmp_path / "new" / "history.sqlite"
    assert cli(["history", "add", str(src), "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith("stored run #1 (commit -, ")  # fixture() records name no commit
    [run], rows = history.runs(db), list(history.rows(db))
    assert len(rows) == len(recs) - 2 == _count(db, "comparisons")
    row = next(r for r in rows if r.layer == 3 and r.stage == "propagated" and r.pair == "kyutai->flax")
    assert row[1:9] == (
        "parity/test_lm.py::test_layer_drift[kyutai->flax-float32]",
        "lm_hidden",
        "kyutai->flax",
        "float32",
        None,
        3,
        "propagated",
        "fail",
    )
    assert (row.max_abs_rms, row.mae_rms, row.atol) == pytest.approx((3e-4, 3e-5, 1e-5))
    assert json.loads(row.tolerance) == recs[0]["tolerance"]
    assert math.isnan(rows[0].max_abs_rms) and rows[0].component == "rmsnorm"
    assert next(r for r in rows if r.control is not None).control == "eps_1e-5"
    assert run.counts["total"] == len(recs) and run.platforms == [rec()["platform"]]

    assert cli(["history", "add", str(src), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("already stored as run #1 (") and "nothing added" in out
    assert (_count(db, "runs"), _count(db, "comparisons")) == (1, len(recs) - 2)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for statement in ("DELETE FROM comparisons", "UPDATE runs SET commit_id = 'x'"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)

    assert cli(["history", "list", "--db", str(db)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split() == ["run", "date", "commit", "platform", "comparisons", "fail", "source"]
    assert listed[1].split()[:2] == ["#1", "2026-01-01"] and listed[1].endswith(str(src.resolve()))
    assert listed[-1] == f"1 run(s) in {db.resolve()}"


def test_commit_comes_from_the_sidecar_else_the_records(tmp_path: Path) -> None:
    with_commit = write(tmp_path / "a.jsonl", _run(0, RUNS))
    assert history.load_run(with_commit)[0].commit == COMMITS[0]
    recordfile.meta_path(with_commit).write_text(json.dumps({"commit": "f" * 40, "start": "2026-02-01T10:00:00Z"}))
    run = history.load_run(with_commit)[0]
    assert (run.commit, run.date) == ("f" * 40, "2026-02-01T10:00:00+00:00")
    old = write(tmp_path / "old.jsonl", _run(1, RUNS, commit=False))  # records written before the commit field
    assert history.load_run(old)[0].commit is None
    mixed = _run(0, RUNS) + _run(1, RUNS)[:1]
    run, _, warnings = history.load_run(write(tmp_path / "mixed.jsonl", mixed))
    assert run.commit == COMMITS[0] and "the records name 2 commits" in warnings[0]


def _add_in_subprocess(src: Path, db: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "reports", "history", "add", str(src), "--db", str(db)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_adds_to_a_fresh_path_both_land(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    files = [write(tmp_path / f"run{i}.jsonl", _run(i, RUNS)) for i in range(2)]
    procs = [_add_in_subprocess(f, db) for f in files]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    assert all(rc == 0 and out.startswith("stored run #") for rc, out, _ in results), results
    runs, rows = history.runs(db), list(history.rows(db))
    assert sorted(r.commit for r in runs) == list(COMMITS[:2]) and len(rows) == 2 * (len(RUNS) + 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_writers_wait_for_the_lock(tmp_path: Path) -> None:
    """Two adds while another connection holds the write lock both wait and both land once it is released; an add
    whose wait runs out is a clear error that changes nothing (the control: the lock is really held)."""
    db, files = _history(tmp_path, range(1))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    before = db.read_bytes()
    with pytest.raises(history.HistoryError, match=re.escape(f"{db}: still locked by another writer after 0.2 s")):
        history.add(db, files[1], timeout=0.2)
    assert db.read_bytes() == before
    results: list[Any] = []
    threads = [threading.Thread(target=lambda f=f: results.append(history.add(db, f, timeout=30))) for f in files[1:]]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert all(t.is_alive() for t in threads) and results == []  # both are waiting
    holder.execute("COMMIT")
    holder.close()
    for t in threads:
        t.join(timeout=30)
    assert sorted(run.commit for run, added, _ in results if added) == list(COMMITS[1:])
    assert [r.commit for r in history.runs(db)] == list(COMMITS)


def _damaged(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A file that is not a usable history, and what the error must say about it."""
    path = tmp_path / "history.sqlite"
    if kind == "truncated":
        db, _ = _history(tmp_path)
        data = db.read_bytes()
        assert len(data) >= 4 * 4096
        path.write_bytes(data[: len(data) // 2])
        return path, f"truncated: its header says {len(data)} bytes, the file has {len(data) // 2}"
    if kind == "foreign":  # an SQLite file with a table of our name
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.executescript("CREATE TABLE runs (id INTEGER, name TEXT); INSERT INTO runs VALUES (1, 'theirs');")
        return path, "an SQLite database but not a parity run history (no history_format table; tables: runs)"
    if kind == "newer":
        db, _ = _history(tmp_path, range(1))
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.executescript("UPDATE history_format SET version = 2;")
        return db, "run history version 2; this code reads version 1"
    if kind == "text":
        path.write_text('{"preset": "tiny"}\n' * 200)
        return path, "not an SQLite database, so not a parity run history"
    path.write_bytes(b"")
    return path, "an empty file, not a run history"


@pytest.mark.parametrize("kind", ["truncated", "foreign", "newer", "text", "empty"])
def test_a_damaged_or_foreign_file_is_a_clear_error_and_left_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path, says = _damaged(kind, tmp_path)
    src = write(tmp_path / "new.jsonl", _run(2, RUNS))
    before, names = path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    for argv in (
        ["history", "add", str(src), "--db", str(path)],
        ["history", "list", "--db", str(path)],
        ["render", str(src), "--history", str(path), "-o", str(tmp_path / "html")],
    ):
        assert cli(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"python -m reports {argv[0]}: error: {path}: ") and says in err, err
        assert err.count("\n") == 1, err
        assert path.read_bytes() == before, argv
        assert sorted(p.name for p in path.parent.iterdir() if p.name != "html") == names  # no journal, no temp file


def test_list_of_a_missing_file_is_an_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.sqlite"
    assert cli(["history", "list", "--db", str(missing)]) == 1
    assert capsys.readouterr().err == f"python -m reports history: error: {missing}: No such file or directory\n"
    assert not missing.exists()


# The commit the records carry (reports.records.commit): a git checkout's HEAD, "-dirty", or None; never an error.


def _git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_of_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = records.commit.__wrapped__  # uncached
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "f.txt").write_text("1")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert commit(repo) == head and len(head) == 40
    (repo / "new.txt").write_text("untracked")
    assert commit(repo) == f"{head}-dirty"
    (repo / "new.txt").unlink()
    (repo / "sub" / "f.txt").write_text("2")
    assert commit(repo) == f"{head}-dirty"
    assert commit(repo / "sub") is None  # not the top level: a copy inside someone else's repository
    assert commit(tmp_path) is None  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert commit(repo) is None  # git missing


def test_records_and_sidecar_carry_the_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(
        nodeid="x.py::t", user_properties=[], config=SimpleNamespace(workerinput={"workerid": "gw0"})
    )
    monkeypatch.setattr(records, "_current_item", fake)
    records.emit({k: v for k, v in rec().items() if k not in schema.CONTEXT_FIELDS})
    [(_, emitted)] = fake.user_properties
    assert emitted["commit"] == records.commit() and validate(emitted) == []
    assert REPO == records.ROOT and (records.commit() is None or records.commit().startswith(_head()))
    assert validate({**emitted, "commit": 1}) == ["commit must be a str or None, got 1"]
    assert validate({k: v for k, v in emitted.items() if k != "commit"}) == []  # older records lack it

    config = SimpleNamespace(
        option=SimpleNamespace(numprocesses=None),
        invocation_params=SimpleNamespace(args=()),
        rootpath=tmp_path,
    )
    writer = plugin.RecordsWriter(config, tmp_path / "records.jsonl")  # type: ignore[arg-type]
    writer.pytest_sessionstart(None)  # type: ignore[arg-type]
    writer.pytest_sessionfinish(None, 0)  # type: ignore[arg-type]
    assert json.loads(recordfile.meta_path(tmp_path / "records.jsonl").read_text())["commit"] == records.commit()


def _head() -> str:
    try:
        return _git(REPO, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return ""
