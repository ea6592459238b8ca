"""Building one record per parity comparison: `emit()`, the crash record, and the context every record carries.

Flow: parity/harness/compare.py builds the comparison fields and calls `emit(record)` once per comparison, pass or
fail. emit() adds the context fields (node id, worker, time, platform, versions, commit, hypothesis profile and
reproduction blob), checks the record with `reports.validate.validate` (a bad record raises ValueError in the test
that emitted it) and attaches it to the running pytest item as the user property `(RECORD_KEY, record)`. pytest copies
user properties onto every test report, xdist carries the reports to the controller, and `reports.plugin` writes each
record there as one JSON line. Only builtin JSON types travel: emit() converts tuples to lists and numpy scalars/arrays
through `.tolist()`, stores non-finite floats under their `NONFINITE` names, and raises TypeError on anything else. The
schema itself (fields, verdicts, defaults) is `reports.schema`.

Outside a test (a bench script calling compare, code run at import or collection time) no item is current: emit()
appends the finished record to the module-level list `UNATTACHED` instead, so nothing is lost. The plugin does not
write those; a script that wants them reads the list itself (`json.dumps` works on every entry).
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform as _platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reports.schema import (
    CALLER_DEFAULTS,
    CALLER_REQUIRED,
    CONTEXT_FIELDS,
    RECORD_FIELDS,
    RECORD_KEY,
    SCHEMA_VERSION,
    VERSION_PACKAGES,
    json_number,
)
from reports.validate import validate

ROOT = Path(__file__).resolve().parents[1]
"""The checkout this package runs from (its parent folder): the repository whose commit the records name."""
UNATTACHED: list[dict[str, Any]] = []
"""Records emitted while no pytest item was running (see the module docstring)."""

_current_item: Any = None  # the running pytest.Item; set and cleared by reports.plugin around each test


def set_current_item(item: Any) -> None:
    """Makes `item` (a pytest.Item, or None) the one emit() attaches records to. Called by reports.plugin."""
    global _current_item
    _current_item = item


def emit(record: Mapping[str, Any]) -> None:
    """Completes, checks and files one comparison record.

    Args:
        record: the comparison fields of `Record` (at least `CALLER_REQUIRED`), builtin JSON types, tuples or numpy
            values; not modified.

    Raises:
        TypeError: a value is not convertible to JSON.
        ValueError: a required field is missing, a context field is given, or `validate()` finds a problem.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"a parity record is a dict, got {type(record).__name__}")
    given = sorted(set(record) & set(CONTEXT_FIELDS))
    if given:
        raise ValueError(f"emit() fills {given}; the caller must not pass them")
    missing = [f for f in CALLER_REQUIRED if f not in record]
    if missing:
        raise ValueError(f"parity record lacks required fields {missing}; got {sorted(record)}")
    body = jsonable(record, "record")
    item = _current_item
    hyp, auto = body.get("hypothesis"), _hypothesis_context()
    if auto is not None and (hyp is None or isinstance(hyp, dict)):
        hyp = {**auto, **(hyp or {})}
    context = {
        "schema": SCHEMA_VERSION,
        "node_id": None if item is None else item.nodeid,
        "worker": _worker_id(item),
        "time": _now(),
        "platform": platform_info(),
        "versions": versions(),
        "commit": commit(),
        "hypothesis_profile": hypothesis_profile(),
    }
    out = _ordered({**CALLER_DEFAULTS, "failures": [], **body, "hypothesis": hyp, **context})
    problems = validate(out)
    if problems:
        raise ValueError("invalid parity record: " + "; ".join(problems))
    if item is None:
        UNATTACHED.append(out)
    else:
        item.user_properties.append((RECORD_KEY, out))


def crash_record(*, node_id: str | None, worker: str, failures: list[str]) -> dict[str, Any]:
    """The record the plugin writes for a test (or a worker) lost to a crashed xdist worker."""
    out = _ordered(
        {
            **CALLER_DEFAULTS,
            "component": None,
            "pair": None,
            "verdict": "worker_crash",
            "failures": list(failures),
            "metrics": None,
            "tolerance": None,
            "dtypes": None,
            "schema": SCHEMA_VERSION,
            "node_id": node_id,
            "worker": worker,
            "time": _now(),
            "platform": platform_info(),
            "versions": versions(),
            "commit": commit(),
            "hypothesis_profile": hypothesis_profile(),
        }
    )
    problems = validate(out)
    if problems:
        raise ValueError("invalid crash record: " + "; ".join(problems))
    return out


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = [("python", _platform.python_version())]
    for name in VERSION_PACKAGES:
        try:
            found.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers (None when absent); computed once per process."""
    return dict(_versions())


@functools.cache
def commit(root: str | os.PathLike[str] = ROOT) -> str | None:
    """The commit the code at `root` was checked out at: `git rev-parse HEAD`, plus "-dirty" when `git status` lists a
    change (modified, staged, deleted or untracked-and-not-ignored files). None, never an error, when `root` is not the
    top level of a git work tree (an installed copy of the package inside some other repository names no commit), when
    git is missing or fails, or takes over 10 s. Computed once per process and root."""
    root = Path(root).resolve()
    try:
        top, head = _git(root, "rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() != root:
            return None
        dirty = _git(root, "status", "--porcelain").strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return head + ("-dirty" if dirty else "")


def _git(root: Path, *args: str) -> str:
    # GIT_* variables of an enclosing git command (a hook) would point git at another repository
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(
        # --no-optional-locks: `git status` must not take index.lock, which would fail a user's concurrent git command
        ["git", "--no-optional-locks", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
        env=env,
    )
    return done.stdout


_platform_cache: dict[str, Any] | None = None


def platform_info() -> dict[str, Any]:
    """Where the numbers were computed: the jax backend and device kind (once jax is imported), python and OS.

    Before jax is imported the backend reads "cpu" (only torch, on CPU, can have run) and nothing is cached, so that a
    later call after jax has started reports the accelerator.
    """
    global _platform_cache
    if _platform_cache is not None:
        return dict(_platform_cache)
    info: dict[str, Any] = {
        "backend": "cpu",
        "device_kind": None,
        "device_count": None,
        "python": _platform.python_version(),
        "system": _platform.platform(),
        "machine": _platform.machine(),
    }
    jax = sys.modules.get("jax")
    if jax is None:
        return info
    try:
        devices = jax.devices()
        info.update(backend=jax.default_backend(), device_kind=devices[0].device_kind, device_count=len(devices))
    except Exception as e:  # a broken accelerator plugin must not hide the comparison; say so in the record instead
        info.update(backend=None, backend_error=f"{type(e).__name__}: {e}")
    _platform_cache = info
    return dict(info)


def hypothesis_profile() -> str | None:
    """The loaded hypothesis settings profile, or None when hypothesis has not been imported."""
    hypothesis = sys.modules.get("hypothesis")
    if hypothesis is None:
        return None
    settings = hypothesis.settings
    try:
        return settings.get_current_profile_name()
    except (AttributeError, AssertionError):
        return getattr(settings, "_current_profile", None)


def _hypothesis_context() -> dict[str, Any] | None:
    """Reproduction data of the running hypothesis example, or None outside one."""
    if "hypothesis" not in sys.modules:
        return None
    from hypothesis.control import current_build_context
    from hypothesis.errors import InvalidArgument

    try:
        ctx = current_build_context()
    except InvalidArgument:
        return None
    info: dict[str, Any] = {"is_final": bool(ctx.is_final), "reproduce": None}
    try:  # private API: reproduction data is a convenience and must never fail a comparison
        from hypothesis.core import reproduction_decorator

        info["reproduce"] = reproduction_decorator(ctx.data.choices)
    except Exception:
        pass
    return info


def _worker_id(item: Any) -> str:
    workerinput = getattr(getattr(item, "config", None), "workerinput", None)
    if workerinput is not None:
        return str(workerinput.get("workerid", "master"))
    if item is not None:
        return "master"
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    return {**{f: record[f] for f in RECORD_FIELDS if f in record}, **record}


def jsonable(x: Any, path: str = "value") -> Any:
    """`x` as builtin JSON types: tuples as lists, numpy values through `.tolist()`, non-finite floats as their
    `NONFINITE` names (so `json.dumps(..., allow_nan=False)` accepts the result).

    Raises:
        TypeError: naming `path` and the offending type, for a non-str key or a value with no JSON form.
    """
    if x is None or isinstance(x, bool):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return json_number(float(x))
    if isinstance(x, str):
        return str(x)
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise TypeError(f"{path}: key {k!r} is a {type(k).__name__}; record keys are str")
            out[str(k)] = jsonable(v, f"{path}.{k}")
        return out
    if isinstance(x, list | tuple):
        return [jsonable(v, f"{path}[{i}]") for i, v in enumerate(x)]
    if callable(getattr(x, "tolist", None)):  # numpy scalars and arrays, without importing numpy
        return jsonable(x.tolist(), path)
    raise TypeError(f"{path}: {type(x).__name__} {x!r:.80} is not a builtin JSON type")
