"""`python -m reports diff` as the run-to-run gate, and the command line's errors (one line, exit 1 or 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parity.harness.record_cases import CRASH, fixture, rec, write
from reports.__main__ import main as cli

NODE = "parity/test_rmsnorm.py::test_parity[hf-ref-float32]"
GONE = f"{NODE} [rmsnorm hf->ref float32]"


def _runs(tmp_path: Path) -> dict[str, Path]:
    """Records of a previous run ("old") and of later runs: its hf->ref rmsnorm comparison (3e-7) changed, lost, a
    worker crashed, nothing recorded."""
    recs = fixture(crash=False)

    def changed(**kw: Any) -> list[dict[str, Any]]:
        return [rec("rmsnorm", pair=("hf", "ref"), node_id=NODE, **kw) if r["node_id"] == NODE else r for r in recs]

    runs = {
        "old": recs,
        "x3": changed(max_abs=9e-7),
        "x1.3": changed(max_abs=4e-7),
        "under_floor": changed(max_abs=1e-5 * 0.5e-3),  # 3e-7 -> 5e-9: below 1% of the budget
        "nan": changed(max_abs=float("nan")),
        "fails": changed(verdict="fail", max_abs=5e-7),
        "removed": [r for r in recs if r["node_id"] != NODE],
        "crashed": fixture(),
        "empty": [],
    }
    return {name: write(tmp_path / f"{name}.jsonl", rs) for name, rs in runs.items()}


@pytest.mark.parametrize(
    ("old", "new", "flags", "status", "says"),
    [
        ("old", "old", [], 0, "gate: pass"),
        ("old", "x3", [], 1, f"REGRESSION max_abs_rms: 3e-07 -> 9e-07 (x3, budget 1e-05) {GONE}"),
        ("old", "x3", ["--factor", "4"], 0, "gate: pass"),
        ("old", "x1.3", [], 0, "gate: pass"),
        ("old", "under_floor", [], 0, "gate: pass"),
        ("old", "nan", [], 1, f"REGRESSION max_abs_rms: 3e-07 -> NaN (xInfinity, budget 1e-05) {GONE}"),
        ("old", "fails", [], 1, f"NEW FAILURE (was pass): {GONE}"),
        ("old", "removed", [], 1, f"REMOVED: {GONE} (was pass)"),
        ("old", "removed", ["--allow-removed"], 0, f"removed (allowed): {GONE} (was pass)"),
        ("old", "crashed", [], 1, f"WORKER CRASH: {CRASH}"),
        ("old", "crashed", ["--allow-crashes"], 0, f"worker crash (allowed): {CRASH}"),
        ("old", "empty", ["--allow-removed"], 1, "NO COMPARISONS: the new run recorded none"),
        ("empty", "empty", [], 1, "NO COMPARISONS: the new run recorded none"),
    ],
)
def test_diff_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, flags: list[str], status: int, says: str
) -> None:
    """A metric grown beyond the factor (and above the floor), a new failure, a comparison that disappeared and a
    worker crash fail the gate, each named; a flag allows the last two; a run that recorded nothing fails it whatever
    the flags (lost comparisons, crashes and empty runs once exited 0)."""
    runs = _runs(tmp_path)
    assert cli(["diff", str(runs[old]), str(runs[new]), *flags]) == status
    out = capsys.readouterr().out.splitlines()
    assert says in out
    assert out[-1].startswith("gate: FAIL (" if status else "gate: pass")


def test_page_names_what_the_gate_found(tmp_path: Path) -> None:
    """The page's "since previous run" section and summary.json name new failures, removed comparisons and crashes."""
    runs = _runs(tmp_path)
    lost = [r for r in fixture() if r["node_id"] != NODE] + [rec("gating_mlp", verdict="fail", max_abs=1.0)]
    new = write(tmp_path / "lost.jsonl", lost)
    assert cli(["render", str(new), "-o", str(tmp_path / "html"), "--previous", str(runs["old"])]) == 0
    prev = json.loads((tmp_path / "html" / "summary.json").read_text())["previous"]
    assert [r["key"] for r in prev["removed"]] == [GONE] and [r["key"] for r in prev["crashes"]] == [CRASH]
    assert len(prev["new_failures"]) == 1 and "gating_mlp" in prev["new_failures"][0]["key"]
    assert prev["failing"] == ["new_failures", "removed", "crashes"]
    section = (tmp_path / "html" / "report.html").read_text().split('id="previous"')[1].split('id="matrix"')[0]
    assert GONE.replace(">", "&gt;") in section and CRASH in section and "gate: <b>FAIL</b>" in section


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["summary", "{missing}"], "{missing}: No such file or directory"),
        (["summary", "{config}"], "{config}: no parity record in 4 non-blank line(s); line 1: not JSON"),
        (["render", "{missing}", "-o", "{out}"], "{missing}: No such file or directory"),
        (["render", "{good}", "--previous", "{config}", "-o", "{out}"], "{config}: no parity record"),
        (["render", "{good}", "-o", "{good}/html"], "{good}/html: Not a directory"),
        (["diff", "{missing}", "{good}"], "{missing}: No such file or directory"),
        (["diff", "{good}", "{config}"], "{config}: no parity record"),
    ],
)
def test_input_errors_are_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """A missing file, a file that holds no record (a config file) or an unwritable output: one line, exit 1."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preset": "tiny", "dim": 32}, indent=1))
    paths = {"good": write(tmp_path / "r.jsonl", [rec()]), "config": config, "missing": tmp_path / "missing.jsonl"}
    paths["out"] = tmp_path / "html"
    assert cli([a.format(**paths) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m reports {argv[0]}: error: {says.format(**paths)}") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "argv",
    [
        ["diff", "a", "b", "--factor", "0.5"],
        ["render", "a", "--previous", "b", "--factor", "1"],
        ["diff", "a", "b", "--floor", "-1"],
        ["summary"],
        ["nonsense"],
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("python -m reports") and err.count("\n") == 1, err
