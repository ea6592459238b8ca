""".ci/nightly, the nightly job's command: end to end on CPU on a one-test selection (the workflow's CPU job runs it on
the whole suite), and its usage errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity.harness.record_cases import rec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "nightly"


# What .ci/nightly reads from the environment: none may leak in from a run that is itself the nightly job's (its
# HISTORY would receive this test's run).
SCRIPT_ENV = ("NIGHTLY_OUT", "HISTORY", "PREVIOUS", "PROFILE", "FULL_SIZE_PRESET", "WORKERS", "TESTS", "PYTEST_ARGS",
              "MUTATIONS", "MUTATION_JOBS", "GITHUB_STEP_SUMMARY", "PYTEST_XDIST_WORKER")  # fmt: skip


def _nightly(*args: str, **env: str) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` is this venv's
    inherited = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    environ = {**inherited, "PATH": path, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environ, capture_output=True, text=True)


def test_cpu_job_end_to_end(tmp_path):
    """Records, junit, history, the gate against the previous night, the report and the job summary, from one run.
    The previous night's records hold a comparison this run lacks: the gate fails on it and so does the script, and
    every artifact is still written."""
    previous = tmp_path / "previous.jsonl"
    previous.write_text(json.dumps(rec("rmsnorm", node_id="parity/test_rmsnorm.py::test_gone")) + "\n")
    out, summary = tmp_path / "out", tmp_path / "step_summary.md"
    done = _nightly("cpu", NIGHTLY_OUT=str(out), PREVIOUS=str(previous), GITHUB_STEP_SUMMARY=str(summary),
                    PROFILE="ci", FULL_SIZE_PRESET="tiny", WORKERS="0", TESTS="parity/test_rmsnorm.py",
                    PYTEST_ARGS="-k control")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    for name in ("records.jsonl", "records.meta.json", "junit.xml", "history.sqlite", "diff.txt", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    assert "report.html" in os.listdir(out / "html")
    assert "1 removed" in (out / "diff.txt").read_text()
    text = summary.read_text()
    assert "## moshi-parity nightly: cpu" in text and "the gate against the previous night FAILED" in text
    assert "rmsnorm" in text  # the summary table of this run's records


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "usage: .ci/nightly"),
        (("rocm",), {}, "usage: .ci/nightly"),
        (("cpu",), {"PREVIOUS": "/nonexistent/records.jsonl"}, "PREVIOUS=/nonexistent/records.jsonl: no such file"),
    ],
)
def test_usage_errors(args, env, message):
    done = _nightly(*args, **env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
