"""The upstream drift watch: `python -m reports upstream RECORDS [--junit JUNIT.xml] [-o OUT.md]`.

Reads the records of a run made against the newest upstream releases instead of the pins (`.ci/upstream`, `tox -e
upstream`) and, optionally, pytest's junit XML of the same run, and writes Markdown (a GitHub job summary) listing:

(a) expected divergences that now pass (upstream fixed: the strict xfail and the README's divergence text must be
    updated): per test and documented reason, the comparisons that carry `expected_divergence` when every counted
    one of them passed (a hypothesis test that finds its divergence after some passing examples still diverges), and
    the junit test cases that failed with "[XPASS(strict)]";
(b) what now fails (upstream changed): the comparisons `reports.analysis.classify` calls "fail" (negative controls,
    which must fail, and expected divergences are not among them), worker crashes, the junit test cases that failed
    or errored for any other reason, and a run that recorded no comparison at all. Given the junit file, a failing
    comparison of a test that passed or xfailed is set aside, not news: the test expected it (a control whose first
    check is recorded without its name, a `pytest.raises(ParityError)`); without the junit file every one is listed;
(c) the package versions the run used against the project's pins (pyproject.toml's test extras; kyutai moshi's from
    .ci/run, which installs it apart).

Exit status: 0 when nothing changed, 1 when (a) or (b) lists anything, and 1 on an input error (a records or junit
file that is missing or cannot be parsed), with one line on stderr as every command of `python -m reports` writes it.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports import analysis, recordfile

ROOT = Path(__file__).resolve().parent.parent
WATCHED: tuple[str, ...] = ("torch", "transformers", "moshi", "jax", "jaxlib", "flax")
"""The packages whose run version the versions table compares with the pins, in the table's order."""
XPASS = "[XPASS(strict)]"
_MESSAGE_CHARS = 300


class JunitError(ValueError):
    """A junit file that is not junit XML."""


@dataclass
class JunitCase:
    """One test case of a junit file: its pytest node id, its outcome ("passed", "failure", "error", "skipped",
    "xfailed"; a strict XPASS is a "failure" whose message starts with "[XPASS(strict)]") and the message."""

    node_id: str
    kind: str
    message: str = ""

    @property
    def xpass(self) -> bool:
        return self.kind == "failure" and self.message.startswith(XPASS)

    @property
    def failed(self) -> bool:
        return self.kind in ("failure", "error") and not self.xpass


@dataclass
class Watch:
    """The watch's findings. `fixed` is (a), `failing`, `crashes`, `failing_tests` and `empty` are (b)."""

    fixed: list[dict[str, Any]] = field(default_factory=list)
    xpassed: list[JunitCase] = field(default_factory=list)
    failing: list[dict[str, Any]] = field(default_factory=list)
    expected_failing: list[dict[str, Any]] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    failing_tests: list[JunitCase] = field(default_factory=list)
    empty: bool = False
    versions: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def fixed_tests(self) -> list[str]:
        """The distinct tests of (a), records and junit together."""
        return sorted({f["node_id"] for f in self.fixed} | {c.node_id for c in self.xpassed})

    def failing_names(self) -> list[str]:
        """The distinct tests (or crashed workers) of (b), records and junit together."""
        return sorted(
            {f["node_id"] for f in self.failing}
            | {c["test"] for c in self.crashes}
            | {c.node_id for c in self.failing_tests}
        )

    @property
    def changed(self) -> bool:
        return bool(self.fixed or self.xpassed or self.failing or self.crashes or self.failing_tests or self.empty)


def node_id(classname: str, name: str) -> str:
    """A junit test case's pytest node id: classname "parity.test_lm.TestX", name "test_a[x]" ->
    "parity/test_lm.py::TestX::test_a[x]" (the module is the last dotted part before the first one that is a class); a
    module's collection error (classname "", name "parity.test_lm") -> "parity/test_lm.py"."""
    if not classname:
        return name.replace(".", "/") + ".py"
    parts = classname.split(".")
    cut = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts))
    module = "/".join(parts[:cut])
    return "::".join([f"{module}.py" if module else "?", *parts[cut:], name])


def read_junit(path: str | Path) -> list[JunitCase]:
    """The test cases of a pytest junit XML file with their outcomes (see `JunitCase`), in file order.

    Raises:
        OSError: the file cannot be read.
        JunitError: it is not junit XML.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise JunitError(f"{path}: not a junit XML file: {e}") from e
    if root.tag not in ("testsuites", "testsuite"):
        raise JunitError(f"{path}: not a junit XML file: its root element is <{root.tag}>")
    out = []
    for case in root.iter("testcase"):
        nid = node_id(case.get("classname", ""), case.get("name", "?"))
        found = [e for e in case if e.tag in ("failure", "error", "skipped")]
        for element in found:
            kind = element.tag
            if kind == "skipped" and element.get("type") == "pytest.xfail":
                kind = "xfailed"
            out.append(JunitCase(nid, kind, element.get("message") or (element.text or "").strip()))
        if not found:
            out.append(JunitCase(nid, "passed"))
    return out


def pins(root: Path = ROOT) -> dict[str, str]:
    """The project's pins: package -> version spec ("==2.13.0", "==5.24.*") from pyproject.toml's test extras and
    core dependencies, and moshi's from .ci/run (`moshi==X`). A file that is missing gives no pins."""
    out: dict[str, str] = {}
    try:
        with open(root / "pyproject.toml", "rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        project = {}
    for requirement in [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("test", [])]:
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(==\s*[^;,\s]+)", requirement)
        if m:
            out.setdefault(_key(m.group(1)), m.group(2).replace(" ", ""))
    try:
        m = re.search(r"\bmoshi==([0-9][^\s'\"]*)", (root / ".ci" / "run").read_text(encoding="utf-8"))
    except OSError:
        m = None
    if m:
        out.setdefault("moshi", f"=={m.group(1)}")
    return out


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version: "2.13.0+cpu" -> (2, 13, 0), "0.11.0rc1" -> (0, 11, 0)."""
    numbers = []
    for part in version.split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        numbers.append(int(m.group(0)))
        if m.group(0) != part:
            break
    return tuple(numbers)


def against_pin(version: str | None, pin: str | None) -> str:
    """How a run's version relates to its pin: "at pin", "newer", "older", "no pin", "not installed"."""
    if version is None:
        return "not installed"
    if not pin:
        return "no pin"
    wanted = pin.removeprefix("==")
    if wanted.endswith(".*"):
        prefix = _release(wanted[:-2])
        got = _release(version)[: len(prefix)]
    else:
        prefix, got = _release(wanted), _release(version)
        width = max(len(prefix), len(got))
        prefix, got = prefix + (0,) * (width - len(prefix)), got + (0,) * (width - len(got))
    return "at pin" if got == prefix else "newer" if got > prefix else "older"


def versions_table(records: Iterable[analysis.Record], pinned: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per watched package: its pin, the version(s) the run's comparisons recorded (distinct values, in order), and
    how they relate to the pin (the worst of them: older, newer, then at pin)."""
    seen: dict[str, list[str | None]] = {p: [] for p in WATCHED}
    for r in records:
        if analysis.classify(r) == "worker_crash":  # the controller's context, not the computing worker's
            continue
        for package in WATCHED:
            v = (r.get("versions") or {}).get(package)
            if v not in seen[package]:
                seen[package].append(v)
    rows = []
    for package in WATCHED:
        run = seen[package] or [None]
        states = [against_pin(v, pinned.get(package)) for v in run]
        state = next((s for s in ("older", "not installed", "newer", "no pin") if s in states), "at pin")
        rows.append({"package": package, "pin": pinned.get(package), "run": run, "status": state})
    return rows


def watch(
    records: Iterable[analysis.Record], junit: Iterable[JunitCase] = (), *, pinned: Mapping[str, str] | None = None
) -> Watch:
    """The findings of one run: see the module docstring. `pinned` defaults to `pins()` of this checkout."""
    records, junit = list(records), list(junit)
    kept = analysis.counted(records)
    # tests whose failing comparisons the test itself expected: they passed, or xfailed, and never failed
    failed_tests = {c.node_id for c in junit if c.kind in ("failure", "error")}
    expecting = {c.node_id for c in junit if c.kind in ("passed", "xfailed")} - failed_tests
    out = Watch(counts=analysis.count(records))
    out.versions = versions_table(records, pins() if pinned is None else pinned)
    out.empty = not out.counts["comparisons"]

    divergences: dict[tuple[str, str], list[analysis.Record]] = {}
    for r in kept:
        if r.get("expected_divergence") is not None and analysis.classify(r) in ("pass", "expected_divergence"):
            divergences.setdefault((str(r.get("node_id")), str(r["expected_divergence"])), []).append(r)
    for (nid, reason), rs in sorted(divergences.items()):
        if all(r.get("verdict") == "pass" for r in rs):
            out.fixed.append(
                {
                    "node_id": nid,
                    "reason": reason,
                    "components": sorted({str(r.get("component")) for r in rs}),
                    "pairs": sorted({analysis.pair_name(r) for r in rs}),
                    "dtypes": sorted({analysis.dtype_name(r) for r in rs}),
                    "count": len(rs),
                    "worst": _worst(rs),
                }
            )

    failing: dict[tuple[str, str, str, str], list[analysis.Record]] = {}
    for r in kept:
        if analysis.classify(r) == "fail":
            key = (str(r.get("node_id")), str(r.get("component")), analysis.pair_name(r), analysis.dtype_name(r))
            failing.setdefault(key, []).append(r)
    for (nid, component, pair, dtype), rs in sorted(failing.items()):
        worst = max(rs, key=lambda r: analysis.severity(analysis.normalized(r)))
        layers = sorted({r["layer"] for r in rs if r.get("layer") is not None})
        (out.expected_failing if nid in expecting else out.failing).append(
            {
                "node_id": nid,
                "component": component,
                "pair": pair,
                "dtype": dtype,
                "count": len(rs),
                "layers": layers,
                "worst": analysis.normalized(worst),
                "budget": analysis.num((worst.get("tolerance") or {}).get("atol")),
                "failure": "; ".join(worst.get("failures") or []) or "-",
            }
        )
    for r in analysis.crashes(records):
        out.crashes.append({"test": analysis.crash_name(r), "failure": "; ".join(r.get("failures") or [])})
    out.xpassed = [c for c in junit if c.xpass]
    out.failing_tests = [c for c in junit if c.failed]
    return out


def _worst(rs: list[analysis.Record]) -> float | None:
    worst = None
    for r in rs:
        e = analysis.normalized(r)
        if analysis.worse(e, worst):
            worst = e
    return worst


def _cell(x: Any) -> str:
    """Table cell text: one line, pipes escaped, at most `_MESSAGE_CHARS` characters."""
    text = " ".join(str(x).split()).replace("|", "\\|")
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row of already escaped cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _code(x: Any) -> str:
    text = _cell(x).replace("`", "'")
    return f"`{text}`"


def _metric(x: float | None) -> str:
    return analysis.text(x, ".3g")


def markdown(w: Watch, *, records_path: str | Path, junit_path: str | Path | None = None) -> str:
    """The watch's report in Markdown (GitHub-flavoured: headings and tables)."""
    n_fixed, n_failing = len(w.fixed_tests()), len(w.failing_names()) + w.empty
    lines = ["## Upstream drift watch", ""]
    verdict = "**changed**" if w.changed else "**nothing changed**"
    lines.append(
        f"{verdict}: {n_fixed} test(s) with a documented divergence now pass, {n_failing} test(s) now fail. "
        f"Run: {analysis.headline(w.counts)} (`{records_path}`"
        + (f", junit `{junit_path}`)." if junit_path else ", no junit file).")
    )
    lines += ["", "### Expected divergences that now pass (upstream fixed: update the xfail and the README)", ""]
    if not n_fixed:
        lines.append("None.")
    if w.fixed:
        header = ("test", "documented divergence", "component", "pair", "dtype", "comparisons", "worst \\|d\\|/rms")
        lines += _table(header, [
            (_code(f["node_id"]), _cell(f["reason"]), _cell(", ".join(f["components"])), _cell(", ".join(f["pairs"])),
             _cell(", ".join(f["dtypes"])), str(f["count"]), _metric(f["worst"]))
            for f in w.fixed
        ])  # fmt: skip
    if w.xpassed:
        lines += ["", "Strict xfails that passed (junit):", ""]
        lines += [f"- {_code(c.node_id)}: {_cell(c.message)}" for c in w.xpassed]
    lines += ["", "### Comparisons and tests that now fail (upstream changed)", ""]
    if not n_failing:
        lines.append("None.")
    if w.empty:
        lines.append("- **The run recorded no comparison** (see the junit file and the job log).")
    if w.failing:
        header = ("test", "component", "pair", "dtype", "failing", "layers", "worst \\|d\\|/rms", "budget", "failure")
        lines += _table(header, [
            (_code(f["node_id"]), _cell(f["component"]), _cell(f["pair"]), _cell(f["dtype"]), str(f["count"]),
             _cell(", ".join(map(str, f["layers"])) or "-"), _metric(f["worst"]), _metric(f["budget"]),
             _cell(f["failure"]))
            for f in w.failing
        ])  # fmt: skip
    if w.crashes:
        lines += ["", "Worker crashes:", ""]
        lines += [f"- {_code(c['test'])}: {_cell(c['failure'] or '-')}" for c in w.crashes]
    if w.failing_tests:
        lines += ["", "Tests that failed or errored (junit):", ""]
        lines += [f"- {_code(c.node_id)} ({c.kind}): {_cell(c.message or '-')}" for c in w.failing_tests]
    if w.expected_failing:
        names = sorted({f["node_id"] for f in w.expected_failing})
        lines += [
            "",
            f"Not news: {sum(f['count'] for f in w.expected_failing)} failing comparison(s) in {len(names)} test(s) "
            "that passed or xfailed, so the test expected them (a control's check recorded without its name, a "
            "`pytest.raises`): " + ", ".join(_code(n) for n in names),
        ]
    lines += ["", "### Versions: this run against the pins", "", "| package | pin | this run | |", "|---|---|---|---|"]
    for v in w.versions:
        run = ", ".join("-" if x is None else str(x) for x in v["run"])
        lines.append(f"| {v['package']} | {_cell(v['pin'] or '-')} | {_cell(run)} | {v['status']} |")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"  # one blank line between blocks


def main(args: argparse.Namespace) -> int:
    """`python -m reports upstream`: writes the Markdown (to -o, else stdout); exits 1 when anything changed."""
    loaded = recordfile.read(args.records, require_records=True)
    for line in loaded.warnings():
        print(line, file=sys.stderr)
    try:
        cases = read_junit(args.junit) if args.junit else []
    except JunitError as e:
        print(f"python -m reports upstream: error: {e}", file=sys.stderr)
        return 1
    w = watch(loaded.records, cases)
    text = markdown(w, records_path=args.records, junit_path=args.junit)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{'changed' if w.changed else 'nothing changed'}; wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 1 if w.changed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `upstream` command's arguments to `parser` (a subcommand parser of reports/__main__.py)."""
    parser.add_argument("records", help="records JSONL file of the run against the newest releases")
    parser.add_argument("--junit", metavar="JUNIT.xml", help="pytest's --junitxml file of the same run")
    parser.add_argument("-o", "--output", metavar="OUT.md", help="write the Markdown here (default: stdout)")
