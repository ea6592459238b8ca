"""The records plugin: each emit() becomes exactly one valid JSON line, with or without xdist; nothing is lost silently.

The end-to-end tests run pytest in a subprocess (pytester) on small generated test files that import neither torch nor
jax. Every generated emit also appends "<worker> <uid>" to a ledger file, so the records file is checked against what
was actually emitted, by which process.
"""

from __future__ import annotations

import ast
import configparser
import graphlib
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from reports import analysis, recordfile, records, schema
from reports.validate import validate

REPO = Path(__file__).resolve().parents[1]

HELPER = """
import os
import sys
import pathlib
import uuid

from reports.records import emit

LEDGER = pathlib.Path(__file__).with_name("ledger.txt")


def _emit(verdict="pass", **fields):
    uid = uuid.uuid4().hex
    emit(
        {
            "component": "rmsnorm",
            "pair": {"reference": "hf", "candidate": "flax"},
            "verdict": verdict,
            "failures": [] if verdict == "pass" else ["max_abs 1.0e+00 > 1e-06"],
            "metrics": {"max_abs": 0.0, "max_abs_index": [0, 1], "mae": 0.0, "max_rel": 0.0},
            "tolerance": {"atol": 1e-6, "rtol": 0.0, "mae": 1e-7},
            "dtypes": {"reference": "float32", "candidate": "float32", "expected": "float32"},
            "uid": uid,
            **fields,
        }
    )
    with LEDGER.open("a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'master')} {uid}\\n")
"""

SUITE = """
import pytest
from hypothesis import given, settings, strategies as st


@pytest.fixture
def phases():
    _emit(phase="setup")
    yield
    _emit(phase="teardown")


def test_setup_call_teardown(phases):
    _emit(phase="call")


def test_fails():
    _emit("fail")
    assert False, "a parity failure"


def test_negative_control():
    _emit("fail", control="rope_halves_swapped")


def test_expected_divergence():
    _emit("expected_divergence", expected_divergence="upstream kyutai clamps, hf does not")


@settings(max_examples=7, derandomize=True, database=None)
@given(st.integers(0, 10**6))
def test_hypothesis(x):
    _emit(config={"x": x})


@pytest.mark.parametrize("n", range(6))
def test_many(n):
    for _ in range(n % 3 + 1):
        _emit(layer=n)
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Runs pytest with reports.plugin in a subprocess; returns (result, records path)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("MOSHI_PARITY_RECORDS", raising=False)
    monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
    path = pytester.path / "out" / "records.jsonl"

    def go(source: str, *args: str, records_arg: bool = True) -> pytest.RunResult:
        pytester.makepyfile(test_generated=HELPER + source)
        extra = ("--records", str(path)) if records_arg else ()
        return pytester.runpytest_subprocess("-p", "reports.plugin", *extra, *args, timeout=120)

    return go, path


def _ledger(pytester: pytest.Pytester) -> list[tuple[str, str]]:
    lines = (pytester.path / "ledger.txt").read_text().splitlines()
    return sorted(tuple(line.split()) for line in lines)  # type: ignore[misc]


def _load_valid(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line parses on its own
    assert len(recs) == len(lines)
    problems = {i: validate(r) for i, r in enumerate(recs) if validate(r)}
    assert not problems
    return recs


@pytest.mark.parametrize("workers", ["2", "0"])
def test_one_line_per_emit(run, pytester: pytest.Pytester, workers: str) -> None:
    go, path = run
    result = go(SUITE, "-n", workers)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    recs = _load_valid(path)
    ledger = _ledger(pytester)
    assert sorted((r["worker"], r["uid"]) for r in recs) == ledger  # same emits, attributed to the emitting process
    assert len(recs) == 25

    def of(test: str) -> list[dict]:
        return [r for r in recs if r["node_id"] == f"test_generated.py::{test}"]

    assert sorted(r["phase"] for r in of("test_setup_call_teardown")) == ["call", "setup", "teardown"]
    assert [r["verdict"] for r in of("test_fails")] == ["fail"]
    hyp = of("test_hypothesis")
    assert len(hyp) == 7
    assert all(r["hypothesis"]["reproduce"].startswith("@reproduce_failure(") for r in hyp)
    assert all(r["hypothesis_profile"] for r in hyp)
    assert {r["worker"] for r in recs} == ({"gw0", "gw1"} if workers == "2" else {"master"})

    counts = "25 comparisons (22 pass, 1 fail, 1 negative controls, 1 expected divergences); 25 records"
    result.stdout.fnmatch_lines([f"parity records: {counts} -> {path}"])
    meta = json.loads(recordfile.meta_path(path).read_text())
    assert meta["exitstatus"] == 1
    assert meta["workers"] == (2 if workers == "2" else 0)
    assert meta["counts"] == analysis.count(recs)
    assert meta["crashed_workers"] == []
    assert not list(path.parent.glob("*.tmp"))


def test_worker_crash_is_recorded(run) -> None:
    go, path = run
    source = """
import os
import sys


def test_before():
    _emit()


def test_crash():
    _emit()
    os._exit(1)


def test_after():
    _emit()
"""
    result = go(source, "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    recs = _load_valid(path)
    crashes = [r for r in recs if r["verdict"] == "worker_crash"]
    assert [r["node_id"] for r in crashes] == ["test_generated.py::test_crash"]
    assert "crashed while running 'test_generated.py::test_crash'" in crashes[0]["failures"][0]
    assert crashes[0]["worker"].startswith("gw")
    passed = {r["node_id"] for r in recs if r["verdict"] == "pass"}
    assert passed == {"test_generated.py::test_before", "test_generated.py::test_after"}
    result.stdout.fnmatch_lines(["parity records: 2 comparisons (2 pass, *), 1 worker crash; 3 records -> *"])
    assert json.loads(recordfile.meta_path(path).read_text())["crashed_workers"] == [crashes[0]["worker"]]


def test_crashed_run_leaves_the_previous_file(run, pytester: pytest.Pytester) -> None:
    go, path = run
    path.parent.mkdir(parents=True)
    path.write_text("previous run\n")
    source = """
import os
import sys


def test_first():
    _emit()


def test_controller_dies():
    os._exit(3)
"""
    result = go(source, "-n", "0")
    assert result.ret == 3
    assert path.read_text() == "previous run\n"
    [partial] = path.parent.glob(".records.jsonl.*.tmp")
    assert len(partial.read_text().splitlines()) == 1  # written and flushed as the report arrived
    assert not recordfile.meta_path(path).exists()


def test_env_path_and_no_records(run, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    go, path = run
    env_path = pytester.path / "from_env.jsonl"
    monkeypatch.setenv("MOSHI_PARITY_RECORDS", str(env_path))
    source = "def test_one():\n    _emit()\n"
    assert go(source, "-n", "0", records_arg=False).ret == 0
    assert len(_load_valid(env_path)) == 1
    env_path.unlink()
    assert go(source, "-n", "0", "--no-records", records_arg=False).ret == 0
    assert not env_path.exists() and not path.exists()


# emit() and validate() in this process, with a stand-in item so nothing reaches this session's own records file.


def _record(**fields) -> dict:
    return {
        "component": "attention",
        "pair": {"reference": "hf", "candidate": "flax"},
        "verdict": "pass",
        "metrics": {"max_abs": 0.0, "max_abs_index": (0, 1), "mae": 0.0, "max_rel": 0.0},
        "tolerance": {"atol": 1e-6},
        "dtypes": {"reference": "float32", "candidate": "float32", "expected": "float32"},
        **fields,
    }


@pytest.fixture
def item(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    config = SimpleNamespace(workerinput={"workerid": "gw7"})
    fake = SimpleNamespace(nodeid="x.py::t", user_properties=[], config=config)
    monkeypatch.setattr(records, "_current_item", fake)
    return fake


def test_emit_attaches_a_complete_json_record(item: SimpleNamespace) -> None:
    source = _record(layer=np.int64(3), metrics={**_record()["metrics"], "kl": np.float32(math.inf), "mae": math.nan})
    before = json.dumps(source, default=repr)
    records.emit(source)
    assert json.dumps(source, default=repr) == before  # the caller's dict is not modified
    [(key, rec)] = item.user_properties
    assert key == schema.RECORD_KEY
    assert validate(rec) == []
    assert list(rec)[: len(schema.RECORD_FIELDS)] == list(schema.RECORD_FIELDS)
    assert (rec["node_id"], rec["worker"], rec["layer"], rec["pair_class"]) == ("x.py::t", "gw7", 3, None)
    assert rec["metrics"]["max_abs_index"] == [0, 1]
    assert (rec["metrics"]["kl"], rec["metrics"]["mae"]) == ("Infinity", "NaN")
    assert rec["failures"] == [] and rec["hypothesis"] is None
    assert set(rec["versions"]) >= {"torch", "transformers", "moshi", "jax", "flax", "numpy", "hypothesis"}
    json.loads(json.dumps(rec, allow_nan=False))


def test_emit_without_an_item_goes_to_unattached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "_current_item", None)
    monkeypatch.setattr(records, "UNATTACHED", [])
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    records.emit(_record())
    [rec] = records.UNATTACHED
    assert (rec["node_id"], rec["worker"]) == (None, "master")


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"worker": "gw0"}, ValueError, "emit\\(\\) fills"),
        ({"config": {1: "a"}}, TypeError, "record.config: key 1"),
        ({"config": {"f": object()}}, TypeError, "record.config.f: object"),
        ({"verdict": "ok"}, ValueError, "verdict must be one of"),
        ({"verdict": "fail"}, ValueError, "needs at least one failure"),
        ({"stage": "teacher-forced"}, ValueError, "stage must be"),
        ({"pair": ["hf", "flax"]}, ValueError, "pair must be"),
        ({"metrics": {"max_abs": 1.0}}, ValueError, "metrics must be"),
        ({"inputs": {"x": [2, -1]}}, ValueError, "inputs must be"),
        ({"pair_class": "upstream-vs-ours"}, ValueError, "pair_class must be one of"),
    ],
)
def test_emit_rejects_bad_records(item: SimpleNamespace, fields: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        records.emit(_record(**fields))
    assert item.user_properties == []


def test_emit_requires_the_comparison_fields(item: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match="lacks required fields \\['tolerance'\\]"):
        records.emit({k: v for k, v in _record().items() if k != "tolerance"})


def test_emit_keeps_the_pair_class(item: SimpleNamespace) -> None:
    for pair_class in schema.PAIR_CLASSES:
        records.emit(_record(pair_class=pair_class))
    assert [rec["pair_class"] for _, rec in item.user_properties] == list(schema.PAIR_CLASSES)


def test_records_written_before_pair_class_stay_valid(item: SimpleNamespace) -> None:
    records.emit(_record())
    [(_, rec)] = item.user_properties
    old = {k: v for k, v in rec.items() if k != "pair_class"}
    assert validate(old) == []
    assert "missing field 'component'" in validate({k: v for k, v in rec.items() if k != "component"})


def test_validate_lists_every_problem() -> None:
    assert validate([]) == ["record is a list, not a dict"]
    problems = validate({"verdict": "pass", "layer": -1})
    assert "missing field 'node_id'" in problems
    assert "missing field 'pair_class'" not in problems  # added to schema 1 later: optional
    assert any(p.startswith("layer must be") for p in problems)
    assert "a 'pass' record needs metrics and no failures" in problems
    assert any(p.startswith("metrics must be") for p in validate({"metrics": {"max_abs": [1.0]}}))


def test_crash_record_and_summary() -> None:
    crash = records.crash_record(node_id=None, worker="gw3", failures=["worker 'gw3' went down"])
    assert validate(crash) == []
    rows = [
        {"verdict": "pass", "control": None},
        {"verdict": "fail", "control": None},
        {"verdict": "fail", "control": "c"},
        {"verdict": "pass", "control": "c"},
        {"verdict": "expected_divergence", "control": None},
        crash,
    ]
    assert analysis.count(rows) == {
        "total": 6,
        "comparisons": 5,
        "pass": 1,
        "fail": 1,
        "controls": 2,
        "controls_not_failing": 1,
        "expected_divergence": 1,
        "worker_crash": 1,
        "shrink_attempts": 0,
    }


def test_assert_parity_comparisons_reach_the_file_under_xdist(run) -> None:
    """The real comparison entry point, called a known number of times over two workers: one line per call."""
    go, path = run
    source = """
import numpy as np
import pytest
from parity.harness.compare import ParityError, assert_parity

@pytest.mark.parametrize("n", range(6))
def test_compare(n):
    x = np.arange(12, dtype=np.float32).reshape(3, 4) + n
    for _ in range(n):
        assert_parity(x, x, component="rmsnorm", pair=("hf", "flax"), expected_dtype="float32")
    with pytest.raises(ParityError):
        assert_parity(x, x + 1, component="rmsnorm", pair=("hf", "flax"), expected_dtype="float32", control="shifted")
"""
    result = go(source, "-n", "2")
    assert result.ret == pytest.ExitCode.OK
    recs = _load_valid(path)
    assert len(recs) == sum(range(6)) + 6  # 15 passing comparisons + 6 negative controls
    assert sum(r["control"] == "shifted" for r in recs) == 6
    assert {r["worker"] for r in recs} == {"gw0", "gw1"}


def _reports_imports(source: str) -> set[str]:
    """The reports modules a module's source imports anywhere (function-level imports included)."""
    deps = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "reports":
            deps |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reports."):
            deps.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("reports.")}
    return deps


def test_reports_import_graph_has_no_cycle() -> None:
    lazy = "from reports import diff\ndef f():\n    from reports.records import X\n    import reports.schema\n"
    assert _reports_imports(lazy) == {"diff", "records", "schema"}  # control: the scan sees function-level imports
    graph = {p.stem: _reports_imports(p.read_text()) - {p.stem} for p in (REPO / "reports").glob("*.py")}
    assert graph["schema"] == set(), "reports.schema is the leaf: it imports nothing from reports"
    assert graph["validate"] == {"schema"}
    assert {"schema", "validate"} <= graph["records"]
    assert "records" not in graph["recordfile"] | graph["analysis"]  # reading and aggregating need no emit machinery
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert set(order) >= {"schema", "validate", "records", "recordfile", "analysis", "summary", "render", "diff"}


def _import_time_packages(source: str) -> set[str]:
    """The top-level packages a module imports when it is imported (its body's import statements; a function's
    import, such as emit()'s of hypothesis, runs only when called)."""
    body = ast.parse(source).body
    names = {a.name for node in body if isinstance(node, ast.Import) for a in node.names}
    names |= {n.module for n in body if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
    return {name.split(".")[0] for name in names}


def test_tox_report_env_installs_what_the_commands_import() -> None:
    """`tox -e report` installs its deps, not the project (whose dependencies are the model stack): every module
    `python -m reports` reaches imports only the standard library, `reports` and those deps."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(REPO / "tox.ini")
    deps = set(ini["testenv:report"]["deps"].split())
    sources = {p.stem: p.read_text() for p in (REPO / "reports").glob("*.py")}
    reached, todo = set(), ["__main__"]
    while todo:
        module = todo.pop()
        reached.add(module)
        todo += sorted(_reports_imports(sources[module]) - reached)
    assert "plugin" not in reached and "pytest" in _import_time_packages(sources["plugin"])  # control: the scan sees it
    third_party = set().union(*(_import_time_packages(sources[m]) for m in reached)) - set(sys.stdlib_module_names)
    assert third_party - {"reports"} == deps == {"jinja2", "matplotlib"}
