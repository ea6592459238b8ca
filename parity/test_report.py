"""The HTML drift report and the run diff (`python -m reports render|diff`), from synthetic records written here.

The browser test loads the page in headless Chromium (Debian's `chromium`) and skips, saying why, where it is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from parity.harness.record_cases import CRASH, PROFILE, drift, fixture, rec, write
from reports import analysis, plugin, recordfile
from reports.__main__ import main as cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_render_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "records.jsonl", fixture())
    recordfile.meta_path(src).write_text(json.dumps({"hypothesis_profile": PROFILE, "duration_s": 1.5, "workers": 2}))
    assert cli(["render", str(src), "-o", str(tmp_path / "html")]) == 0
    page = tmp_path / "html" / "report.html"
    assert f"parity report: {page.resolve()}" in capsys.readouterr().out
    html = page.read_text()
    assert 'id="matrix-table"' in html and "<svg" in html
    assert html.count("<svg") == 1  # one drift chart per component x dtype, both runs (pairs) overlaid
    assert "first over budget at layer 3" in html
    assert "@reproduce_failure(&#39;6&#39;, b&#39;FINAL&#39;)" in html  # the final replay's blob, escaped
    assert "b&#39;AAA&#39;" not in html  # shrink attempts are dropped
    assert "HF ignores the theta override" in html and "parity/test_rope.py::test_crash" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "the page must be offline"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I) and "@import" not in html

    s = json.loads((tmp_path / "html" / "summary.json").read_text())
    assert s["counts"]["total"] == len(fixture()) and s["counts"]["worker_crash"] == 1
    assert s["counts"]["comparisons"] == len(fixture()) - 3  # less the 2 shrink attempts and the crash
    cells = {(m["component"], m["pair"], m["dtype"]): m for m in s["matrix"]}
    assert cells[("rmsnorm", "hf->flax", "float32")]["status"] == "pass"
    assert cells[("rmsnorm", "hf->flax", "float32")]["controls"] == 1
    assert cells[("rope", "hf->flax", "float32")]["status"] == "xdiv"
    assert (
        cells[("attention", "hf->flax", "float32")] | {"fail": 1, "status": "fail"}
        == cells[("attention", "hf->flax", "float32")]
    )
    assert cells[("attention", "hf->flax", "float32")]["worst"] == pytest.approx(2e-4)
    runs = {d["pair"]: d for d in s["drift"]}
    assert runs["kyutai->flax"]["stages"]["propagated"]["first_diverging"] == 3
    assert runs["kyutai->flax"]["stages"]["teacher_forced"]["first_diverging"] is None
    assert runs["ref->flax"]["stages"]["propagated"]["first_diverging"] is None
    assert [p["layer"] for p in runs["ref->flax"]["stages"]["teacher_forced"]["points"]] == list(range(6))
    assert s["worst"]["attention"][0]["reproduce"] == "@reproduce_failure('6', b'FINAL')"
    assert s["expected_divergences"][0]["reason"] == "HF ignores the theta override"
    assert s["worker_crashes"][0]["node_id"] == "parity/test_rope.py::test_crash"
    env = s["environment"]  # the crash record's context is the controller's (no device): not a variant of the run
    assert (env["platforms"], env["versions"], env["workers"]) == (
        [rec()["platform"]],
        [rec()["versions"]],
        ["gw0", "gw1"],
    )
    assert "(variant" not in html
    assert env["hypothesis_profiles"] == [PROFILE]
    assert s["environment"]["run"]["duration_s"] == 1.5
    assert s["previous"] is None


def test_malformed_lines_are_reported_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = fixture()
    truncated = json.dumps(rec())[:57]
    src = write(tmp_path / "r.jsonl", good, extra_lines=(truncated + "\n", "[1, 2]\n", json.dumps(rec()) + "\n"))
    assert cli(["render", str(src), "-o", str(tmp_path / "html")]) == 0
    out = capsys.readouterr().out
    n = len(good)
    assert f"r.jsonl:{n + 1}: skipped malformed line: not JSON" in out
    assert f"r.jsonl:{n + 2}: skipped malformed line: not a parity record" in out
    s = json.loads((tmp_path / "html" / "summary.json").read_text())
    assert [m["line"] for m in s["malformed_lines"]] == [n + 1, n + 2]
    assert s["counts"]["total"] == n + 1  # the valid line after the bad ones is kept
    assert "malformed record line(s) skipped" in (tmp_path / "html" / "report.html").read_text()


def test_one_count_in_every_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The terminal line, the summary, the page and summary.json state a run's counts in one sentence
    (`analysis.headline`): shrink attempts and crashes are named beside the comparisons, never among them (the terminal
    line once counted every shrink attempt as a comparison)."""
    recs = fixture()
    src = write(tmp_path / "r.jsonl", recs)
    counts = analysis.count(recs)
    line = analysis.headline(counts)
    assert line == (
        f"{len(recs) - 3} comparisons (23 pass, 4 fail, 1 negative controls, 1 expected divergences), "
        f"1 worker crash, 2 hypothesis shrink attempts not counted; {len(recs)} records"
    )
    writer = plugin.RecordsWriter(SimpleNamespace(), src)
    writer.counts, writer._finished = counts, True
    shown: list[str] = []
    writer.pytest_terminal_summary(SimpleNamespace(write_line=lambda text, **_: shown.append(text)))
    assert shown == [f"parity records: {line} -> {src.resolve()}"]
    assert cli(["summary", str(src)]) == 0
    assert f"{line} from {src.resolve()}" in capsys.readouterr().out.splitlines()
    assert cli(["render", str(src), "-o", str(tmp_path / "html")]) == 0
    s = json.loads((tmp_path / "html" / "summary.json").read_text())
    assert (s["headline"], s["counts"]) == (line, counts)
    assert line in (tmp_path / "html" / "report.html").read_text()


def test_no_number_reads_the_same_in_every_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NaN, Infinity and "no number" read the same (`analysis.text`) in the summary, the diff and the page: the records'
    names and "-", never Python's "nan"/"inf" nor a zero."""
    xdiv = rec("rope", verdict="expected_divergence", expected_divergence="theta", max_abs=0.2)  # no worst in its cell
    old = write(tmp_path / "old.jsonl", [rec("logits", max_abs=1e-7), rec("lm_hidden"), xdiv])
    inf = _nonfinite(rec("lm_hidden", verdict="fail"), "Infinity")
    new = write(tmp_path / "new.jsonl", [_nonfinite(rec("logits", verdict="fail"), "NaN"), inf, xdiv])

    assert cli(["summary", str(new)]) == 0
    worst = {line.split()[0]: line.split()[-2:] for line in capsys.readouterr().out.splitlines()[1:4]}
    assert worst == {"logits": ["NaN", "NaN!"], "lm_hidden": ["Infinity", "Infinity!"], "rope": ["-", "-"]}
    assert cli(["diff", str(old), str(new)]) == 1
    diff_text = capsys.readouterr().out
    assert "REGRESSION max_abs_rms: 1e-07 -> Infinity (xInfinity, budget 1e-05)" in diff_text  # NaN: test_diff_gate
    assert cli(["render", str(new), "-o", str(tmp_path / "html"), "--previous", str(old)]) == 0
    s = json.loads((tmp_path / "html" / "summary.json").read_text())
    assert {m["component"]: m["worst"] for m in s["matrix"]} == {"logits": "NaN", "lm_hidden": "Infinity", "rope": None}
    html = (tmp_path / "html" / "report.html").read_text()
    assert '<td class="n">NaN</td><td class="n">Infinity</td>' in html  # a regression row: new, ratio
    assert re.search(r"<td>rope</td>.*<td class=\"n\">-</td></tr>", html)  # the matrix row's worst
    for shown in (diff_text, html):
        assert not re.search(r"(?<![A-Za-z])(nan|inf)(?![A-Za-z])", shown)


def _nonfinite(r: dict[str, Any], name: str) -> dict[str, Any]:
    """`r` with its errors stored as emit() stores a non-finite float."""
    r["metrics"].update(max_abs=name, mae=name, max_rel=name)
    return r


def test_summary_rows_are_the_report_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m reports summary` prints the rows of the matrix that summary.json (and the page) show: the same counts
    and the same worst error, with NaN ranked worst, on a file holding every case the views once disagreed on."""
    logits = [
        rec("logits", pair=("kyutai", "flax"), max_abs=1e-7, pair_class="upstream-ours"),
        _nonfinite(rec("logits", pair=("kyutai", "flax"), verdict="fail", pair_class="upstream-ours"), "Infinity"),
        _nonfinite(rec("logits", pair=("kyutai", "flax"), verdict="fail", pair_class="upstream-ours"), "NaN"),
        rec("logits", pair=("kyutai", "flax"), verdict="fail", max_abs=3.0, pair_class="upstream-ours"),
        rec("logits", pair=("kyutai", "flax"), control="unscaled", pair_class="upstream-ours"),  # passed: a bug
    ]
    recs = [*fixture(), *logits]  # + hypothesis shrink attempts, a worker crash, records without pair_class
    bad = ('{"verdict": "pass", "comp\n', "[1, 2]\n", '{"preset": "tiny", "dim": 32}\n')  # cut off; JSON, no record
    src = write(tmp_path / "r.jsonl", recs, extra_lines=bad)

    assert cli(["summary", str(src)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert cli(["render", str(src), "-o", str(tmp_path / "html")]) == 0
    s = json.loads((tmp_path / "html" / "summary.json").read_text())

    header = text.index(next(line for line in text if line.startswith("component ")))
    end = next(i for i, line in enumerate(text) if " records from " in line)
    printed = [line.split() for line in text[header + 1 : end]]
    assert len(printed) == len(s["matrix"]) > 5
    for words, row in zip(printed, s["matrix"], strict=True):
        counts = ("pass", "fail", "controls", "expected_divergence")
        want = [row["component"], row["pair"], row["pair_class"] or "-", row["dtype"], *(str(row[k]) for k in counts)]
        assert words[:8] == want
        worst = row["worst"]
        if isinstance(worst, float):
            assert float(words[8]) == pytest.approx(worst, rel=1e-2)
        else:
            assert words[8] == ("-" if worst is None else worst)  # "NaN", "Infinity": the records' names
        assert ("<-" in words) == bool(row["controls_not_failing"])

    cell = next(r for r in s["matrix"] if r["component"] == "logits")
    assert (cell["worst"], cell["pair_class"], cell["status"]) == ("NaN", "upstream-ours", "fail")
    assert (cell["pass"], cell["fail"], cell["controls"], cell["controls_not_failing"]) == (1, 3, 1, 1)
    assert s["worst"]["logits"][0]["max_abs_rms"] == "NaN"
    assert next(r for r in s["matrix"] if r["component"] == "rmsnorm")["pair_class"] is None
    c = s["counts"]
    for k in ("pass", "fail", "controls", "controls_not_failing", "expected_divergence"):
        assert c[k] == sum(r[k] for r in s["matrix"]), k  # the totals are the matrix's column sums
    assert (
        c["total"]
        == len(recs)
        == c["shrink_attempts"]
        + c["worker_crash"]
        + sum(c[k] for k in ("pass", "fail", "controls", "expected_divergence"))
    )
    assert (c["shrink_attempts"], c["worker_crash"]) == (2, 1)
    assert text[end] == f"{s['headline']} from {src.resolve()}"
    problems = [m["problem"] for m in s["malformed_lines"]]
    warnings = [f"{src}:{len(recs) + i}: skipped malformed line: {p}" for i, p in enumerate(problems, 1)]
    assert text[end + 1 :] == [f"worker crash: {CRASH}", *warnings]  # the crashed test by name
    assert problems[0] == "not JSON: Unterminated string starting at column 21"  # once read "starting at at column"
    assert problems[1] == "not a parity record: record is a list, not a dict"
    assert problems[2].startswith("not a parity record: missing field 'schema'")
    assert "upstream-ours" in (tmp_path / "html" / "report.html").read_text()


def test_5000_records_render(tmp_path: Path) -> None:
    """A suite-sized records file (with drift runs and a previous run) renders completely. Not timed: a wall-clock
    bound in a test measures the machine's load, not the code (about 4 s on 2 cores, 2026-11-30)."""
    comps = ("attention", "rmsnorm", "rope", "gating_mlp", "flexible_linear", "decoder_layer")
    pairs = (("hf", "ref"), ("ref", "flax"), ("hf", "flax"), ("kyutai", "hf"))
    recs = []
    for i in range(5000 - 8 * 12):
        c, p, dt = comps[i % 6], pairs[(i // 6) % 4], ("float32", "bfloat16")[(i // 24) % 2]
        verdict = "fail" if i % 97 == 0 else "pass"
        recs.append(rec(c, pair=p, dtype=dt, verdict=verdict, max_abs=1e-7 * (1 + i % 13), node_id=f"t::n{i}"))
    for k in range(8):
        recs.extend(drift(pairs[k % 4], over_from=None if k % 2 else 2 + k % 3))
    src = write(tmp_path / "r.jsonl", recs)
    assert cli(["render", str(src), "-o", str(tmp_path / "html"), "--previous", str(src)]) == 0
    assert json.loads((tmp_path / "html" / "summary.json").read_text())["counts"]["total"] == 5000


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    cmd += [f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1300,2000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless browser test needs Debian's `chromium` (apt-get install chromium)"
)
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    """The page runs its script without errors and requests nothing: the page's CSP (default-src 'none') blocks any
    request and its first script writes every error and blocked request onto the root element (data-errors)."""
    src = write(tmp_path / "r.jsonl", fixture())
    assert cli(["render", str(src), "-o", str(tmp_path / "html")]) == 0
    page = tmp_path / "html" / "report.html"
    bad = tmp_path / "html" / "bad.html"  # negative control: the detector sees a network request and a script error
    bad.write_text(page.read_text().replace("</body>", '<img src="https://example.com/a.png"><script>nope();</script>'))

    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="1"' in dom.stdout
    assert not re.search(r"<html[^>]*data-errors", dom.stdout), re.search(r"<html[^>]*>", dom.stdout)
    assert ":CONSOLE" not in dom.stderr, [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert dom.stdout.count("<svg") == 1 and 'id="matrix-table"' in dom.stdout

    caught = _chromium(["--dump-dom", bad.as_uri()], tmp_path)
    [errors] = re.findall(r'<html[^>]*data-errors="([^"]*)"', caught.stdout)
    assert "blocked: https://example.com/a.png" in errors and "nope is not defined" in errors

    shot = tmp_path / "report.png"
    done = _chromium([f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-2000:]
