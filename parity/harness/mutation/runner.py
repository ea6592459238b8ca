"""Runs planted mutants: each in its own copy of the repository, never in the working tree.

For each mutation: copy the working tree's files (`git ls-files --cached --others --exclude-standard`: tracked and
untracked-but-not-ignored files as they are on disk, uncommitted edits included) into a temporary directory, plant the
mutation there, and run its tests with pytest in that directory (`-x`, the `mutation` hypothesis profile: ci's examples
without shrinking), with the copy first on the import path so that it shadows the editable install.

Verdicts (reports/mutations.py): "killed" when a test fails, "survived" when all pass, "timeout" past the limit,
"invalid" when the snippet does not occur exactly once, the tests cannot be collected (pytest exit status 2 to 5: an
import error, no such test), or the failing test also fails without the mutation (checked for every kill, on an
unmutated copy, once per failing test: a test broken by something else never counts as a kill).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Any

from parity.harness.mutation.catalogue import Mutation, MutationError

PYTEST_ARGS = ("-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "--no-records")
PROFILE = "mutation"
_PACKAGES = ("models_flax", "models_ref", "converters")


def repository_files(root: Path) -> list[str]:
    """The files a copy holds: tracked and untracked-but-not-ignored, as on disk (deleted files left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def copy_tree(root: Path, files: Sequence[str], dest: Path) -> None:
    """Copies `files` (relative to `root`) to `dest`; a file deleted since it was listed is left out."""
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(root / name, target)
        except FileNotFoundError:
            continue


def select(catalogue: Sequence[Mutation], *, only: Sequence[str] = (), sample: int | None = None, seed: int = 0):
    """The mutations to run: `only` by id (an unknown id is a ValueError), else a deterministic sample of `sample`
    (seeded shuffle, then taken round robin over the packages so that a small sample spans them), else all."""
    if only:
        known = {m.id: m for m in catalogue}
        unknown = [i for i in only if i not in known]
        if unknown:
            raise ValueError(f"unknown mutation id(s) {unknown}; known: {sorted(known)}")
        return [known[i] for i in only]
    if sample is None or sample >= len(catalogue):
        return list(catalogue)
    shuffled = list(catalogue)
    random.Random(seed).shuffle(shuffled)
    queues = {p: [m for m in shuffled if m.package == p] for p in sorted({m.package for m in shuffled})}
    picked: list[Mutation] = []
    while len(picked) < sample:
        for queue in queues.values():
            if queue and len(picked) < sample:
                picked.append(queue.pop(0))
    return picked


@dataclass
class Pytest:
    """One pytest run's outcome: exit status (None on timeout), failing node ids, the tail of its output."""

    status: int | None
    failing: list[str]
    output: str
    duration_s: float


def _failing(junit: Path, copy: Path) -> list[str]:
    """Node ids (path::name) of the failed and errored test cases of a junit-xml report."""
    try:
        suite = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return []
    found = []
    for case in suite.iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            continue
        parts = case.get("classname", "").split(".")  # module path, then any test classes
        for split in range(len(parts), 0, -1):
            if (copy / Path(*parts[:split]).with_suffix(".py")).is_file():
                break
        node = "/".join(parts[:split]) + ".py::" + "::".join([*parts[split:], case.get("name", "")])
        found.append(node)
    return found


def run_pytest(copy: Path, tests: Sequence[str], *, timeout: float) -> Pytest:
    """Runs pytest on `tests` in `copy`; on timeout kills its whole process group."""
    junit = copy / ".mutation-junit.xml"
    argv = [sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--hypothesis-profile={PROFILE}", f"--junit-xml={junit}"]
    env = {**_environ(), "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(
        [*argv, *tests], cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        status = None
    text = output.decode(errors="replace")
    failing = _failing(junit, copy) if status == 1 else []
    return Pytest(status, failing, text[-3000:], time.monotonic() - start)


def _environ() -> dict[str, str]:
    """This process's environment less pytest's own variables: the job chooses its options (no xdist, no records),
    and a job started from inside a test (parity/test_mutation.py, under xdist) must not pass on its worker's state."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Job:
    """A mutation job over one repository root.

    Attributes:
        root: the repository whose working tree is copied (never written to).
        timeout: seconds per pytest run.
        check_kills: rerun each kill's failing test on an unmutated copy (see the module docstring).
    """

    root: Path
    timeout: float = 900.0
    check_kills: bool = True
    _baseline: dict[str, Pytest] = field(init=False, default_factory=dict)
    _lock: Lock = field(init=False, default_factory=Lock)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    def copy(self, into: Path) -> Path:
        """A fresh copy of the working tree's files under `into`/repo, listed anew (other edits go on meanwhile)."""
        dest = into / "repo"
        copy_tree(self.root, repository_files(self.root), dest)
        return dest

    def run(self, mutation: Mutation) -> dict[str, Any]:
        """Plants one mutation in a fresh copy, runs its tests, returns its result (reports/mutations.py fields)."""
        source = (self.root / mutation.file).read_text(encoding="utf-8")
        result: dict[str, Any] = {
            "id": mutation.id,
            "class": mutation.bug_class,
            "package": mutation.package,
            "file": mutation.file,
            "verdict": "invalid",
            "duration_s": 0.0,
            "tests": list(mutation.tests),
            "failing": [],
            "reason": None,
            "diff": "",
        }
        try:
            result["diff"] = mutation.diff(source)
            mutated = mutation.apply(source)
        except MutationError as e:
            return {**result, "reason": str(e)}
        with tempfile.TemporaryDirectory(prefix=f"mutant-{mutation.id}-") as tmp:
            copy = self.copy(Path(tmp))
            (copy / mutation.file).write_text(mutated, encoding="utf-8")
            ran = run_pytest(copy, mutation.tests, timeout=self.timeout)
        result["duration_s"] = round(ran.duration_s, 2)
        if ran.status is None:
            return {**result, "verdict": "timeout", "reason": f"tests ran past {self.timeout:.0f} s"}
        if ran.status == 0:
            return {**result, "verdict": "survived"}
        if ran.status != 1 or not ran.failing:
            return {**result, "reason": f"pytest exit status {ran.status} (not a test failure):\n{_tail(ran.output)}"}
        result["failing"] = ran.failing
        broken = [node for node in ran.failing if self.check_kills and not self.passes_unmutated(node)]
        if broken:
            return {**result, "reason": f"fails without the mutation too: {', '.join(broken)}"}
        return {**result, "verdict": "killed"}

    def passes_unmutated(self, node: str) -> bool:
        """Whether test `node` passes on an unmutated copy (cached per node)."""
        with self._lock:
            known = self._baseline.get(node)
        if known is None:
            with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
                known = run_pytest(self.copy(Path(tmp)), (node,), timeout=self.timeout)
            with self._lock:
                self._baseline[node] = known
        return known.status == 0

    def run_all(self, mutations: Sequence[Mutation], *, jobs: int = 1) -> Iterator[dict[str, Any]]:
        """Results in completion order, `jobs` mutants at a time."""
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(self.run, m) for m in mutations]
            for future in as_completed(futures):
                yield future.result()


def _tail(output: str, lines: int = 15) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


def shadows_install(copy: Path) -> list[str]:
    """The mutated packages that a pytest run in `copy` would NOT import from the copy (empty when all come from it):
    the editable install must lose to the copy, or every mutant would test the unmutated tree and survive."""
    code = f"import importlib.util as u\nfor n in {_PACKAGES!r}: print(n, u.find_spec(n).origin)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=copy,
        env={**_environ(), "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if not Path(line.split(" ", 1)[1]).resolve().is_relative_to(copy)]
