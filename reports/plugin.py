"""pytest plugin: collects every parity record, xdist-safe, into one JSON-lines file per run.

Registered by pyproject's `addopts = "-p reports.plugin"` (and by the root conftest, so that overriding addopts does not
lose it).

Every process (xdist workers, or the one process of a run without xdist) marks the running item for
`reports.records.emit`, which attaches records to it as user properties. pytest copies an item's user properties onto
each of its test reports; xdist carries the reports to the controller. Only the controller (the process without
`config.workerinput`) writes:

- records, one JSON object per line, as their reports arrive, flushed per line, into a temporary file next to the
  target; `os.replace` moves it onto the target at the end of the session, so a crashed run leaves the previous
  complete file (and a stray `.records.jsonl.*.tmp`) rather than a half-written one;
- a `worker_crash` record for every test whose xdist worker died under it, and for every worker that went down with
  an error while running no test: nothing is dropped silently. Records the crashed test emitted after its last
  delivered report are lost with the worker, which the record says;
- the sidecar `records.meta.json` (see `reports.recordfile.meta_path`): start and end time, exit status, hypothesis
  profile, workers, versions, commit (`reports.records.commit`), counts.

The closing counts (terminal line and sidecar) are `reports.analysis.count` of the finished file read back with
`reports.recordfile.read`, stated by `reports.analysis.headline`: the sentence `python -m reports summary` and the HTML
report print for the same file.

Options: `--records PATH` (default `$MOSHI_PARITY_RECORDS`, else `reports/out/records.jsonl` under the rootdir; a
relative path is relative to the invocation directory) and `--no-records`.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from reports import analysis, recordfile, records
from reports.schema import RECORD_KEY, SCHEMA_VERSION
from reports.validate import validate

ENV_RECORDS = "MOSHI_PARITY_RECORDS"
DEFAULT_RECORDS = Path("reports/out/records.jsonl")  # under the rootdir
WRITER_NAME = "parity-records-writer"
_PHASES = ("setup", "call", "teardown")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity-records", "parity comparison records (reports.plugin)")
    group.addoption(
        "--records",
        metavar="PATH",
        default=None,
        help=f"write one JSON line per parity comparison to PATH (default: ${ENV_RECORDS}, else "
        f"<rootdir>/{DEFAULT_RECORDS.as_posix()}); a sidecar .meta.json describes the session",
    )
    group.addoption("--no-records", action="store_true", default=False, help="do not write parity records")


def records_path(config: pytest.Config) -> Path:
    """The records file of this run: --records, else $MOSHI_PARITY_RECORDS, else the rootdir default."""
    given = config.getoption("records") or os.environ.get(ENV_RECORDS)
    if not given:
        return config.rootpath / DEFAULT_RECORDS
    path = Path(given).expanduser()
    return path if path.is_absolute() else config.invocation_params.dir / path


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or config.getoption("no_records") or config.getoption("collectonly"):
        return
    config.pluginmanager.register(RecordsWriter(config, records_path(config)), WRITER_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    writer = config.pluginmanager.get_plugin(WRITER_NAME)
    if writer is not None:
        writer.close()
        config.pluginmanager.unregister(writer, WRITER_NAME)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Makes `item` the target of emit() for its setup, call and teardown."""
    records.set_current_item(item)
    try:
        return (yield)
    finally:
        records.set_current_item(None)


class RecordsWriter:
    """The controller's half: writes records as reports arrive, crash records, the sidecar and the summary line."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.path = path.resolve()
        self.counts = analysis.count([])
        self._file: Any = None
        self._tmp: Path | None = None
        self._start: tuple[str, float] | None = None
        self._commit: str | None = None
        self._seen: dict[str, int] = {}  # node id -> records of the item already written
        self._down: dict[str, str] = {}  # worker id -> error, until its crashed test's report arrives
        self._workers: set[str] = set()
        self._crashed: set[str] = set()
        self._finished = False
        self.unwritten: list[str] = []  # records that could not be written, with why

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the report is not a secret
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "w", encoding="utf-8")
        self._start = (_now(), time.monotonic())
        self._commit = records.commit()  # at the start: the code that runs, even if someone commits meanwhile

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when not in _PHASES:  # xdist reports a test its worker died under with when="???"
            self._seen.pop(report.nodeid, None)
            self._write_crash(report)
            return
        # user_properties accumulate on the item and every report carries a copy of all of them so far: the setup
        # report holds the setup records, the call report those plus the call's, ... Write each one once.
        found = [p[1] for p in report.user_properties if len(p) == 2 and p[0] == RECORD_KEY]
        for record in found[self._seen.get(report.nodeid, 0) :]:
            self._write(record)
        if report.when == "teardown":
            self._seen.pop(report.nodeid, None)
        else:
            self._seen[report.nodeid] = len(found)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self._workers.add(node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        if error is not None:
            # xdist reports the test the worker was running (if any) right after this hook; keep the error for it.
            self._down[node.gateway.id] = str(error)
            self._crashed.add(node.gateway.id)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self._file is None or self._finished:
            return
        for worker, error in sorted(self._down.items()):  # went down while running no test
            failure = f"worker {worker!r} went down while running no test: {error}"
            self._write(records.crash_record(node_id=None, worker=worker, failures=[failure]))
        self._down.clear()
        self._file.close()
        assert self._tmp is not None and self._start is not None
        os.replace(self._tmp, self.path)
        self._finished = True
        written = recordfile.read(self.path)
        self.unwritten += [f"line {n} does not read back: {problem}" for n, problem in written.malformed]
        self.counts = analysis.count(written.records)
        meta = {
            "schema": SCHEMA_VERSION,
            "records": str(self.path),
            "counts": self.counts,
            "start": self._start[0],
            "end": _now(),
            "duration_s": round(time.monotonic() - self._start[1], 3),
            "exitstatus": int(exitstatus),
            "hypothesis_profile": records.hypothesis_profile(),
            "workers": len(self._workers),
            "workers_requested": getattr(self.config.option, "numprocesses", None),
            "crashed_workers": sorted(self._crashed),
            "unwritten": self.unwritten,
            "jax_platforms": os.environ.get("JAX_PLATFORMS"),
            "args": list(self.config.invocation_params.args),
            "rootdir": str(self.config.rootpath),
            "versions": records.versions(),
            "commit": self._commit,
            "platform": records.platform_info(),
        }
        _write_atomic(recordfile.meta_path(self.path), json.dumps(meta, indent=2) + "\n")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self._finished:
            return
        c = self.counts
        terminalreporter.write_line(f"parity records: {analysis.headline(c)} -> {self.path}")
        for problem in self.unwritten:
            terminalreporter.write_line(f"parity records: NOT WRITTEN: {problem}", red=True, bold=True)
        if c["controls_not_failing"]:
            terminalreporter.write_line(
                f"parity records: {c['controls_not_failing']} negative control(s) did NOT fail", red=True, bold=True
            )

    def close(self) -> None:
        """Closes the temporary file of a session that never finished; the target path is left untouched."""
        if self._file is not None and not self._file.closed:
            self._file.close()

    def _write_crash(self, report: pytest.TestReport) -> None:
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None) or "unknown"
        failures = [str(report.longrepr)]
        if worker in self._down:
            failures.append(f"worker error: {self._down.pop(worker)}")
        failures.append("records this test emitted after its last delivered report are lost with the worker")
        self._crashed.add(worker)
        self._write(records.crash_record(node_id=report.nodeid, worker=worker, failures=failures))

    def _write(self, record: Any) -> None:
        # Only a record that bypassed emit() can fail here; it is listed in the summary and the sidecar, not dropped.
        problems = validate(record)
        if problems:
            self.unwritten.append(f"invalid ({'; '.join(problems)}): {record!r:.200}")
            return
        try:
            line = json.dumps(record, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            self.unwritten.append(f"not JSON ({e}): {record!r:.200}")
            return
        self._file.write(line + "\n")
        self._file.flush()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
