"""Run-to-run gate: `python -m reports diff OLD.jsonl NEW.jsonl [--factor 2.0] [--allow-removed] [--allow-crashes]`.

Comparisons are matched on (node id, component, pair, dtype, layer, stage); negative controls and worker crashes are
left out of the matching (a control must fail; a crash has no metrics). Per key the worst value of each run is
compared: max|d|/rms(ref), mae/rms(ref) and, for logits, KL. A metric regresses when

    new > factor * max(old, floor * budget)

where `budget` is the policy's bound for that metric (atol, mae, kl) in the new run, so that an error moving from
exactly 0 to 1e-9 of a 1e-5 budget is not a regression while one that grows 2x and matters is. A non-finite new value
where the old one was finite always regresses.

The gate (`GATES`) fails on a metric regression; a new failure (a key that failed in NEW but passed, or did not exist,
in OLD); a removed comparison (a key of OLD missing from NEW: a test deleted, skipped or lost to a crash), unless
`--allow-removed`; a worker crash in NEW, unless `--allow-crashes`; and a NEW that holds no comparison at all, which no
flag allows (a run that recorded nothing proves nothing). Each is listed by name. The command exits 1 when the gate
fails, else 0 (input and usage errors: see `reports.__main__`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import Any

from reports import analysis, recordfile

METRICS: tuple[tuple[str, str], ...] = (("max_abs_rms", "atol"), ("mae_rms", "mae"), ("kl", "kl"))
GATES: tuple[str, ...] = ("regressions", "new_failures", "removed", "crashes", "empty")
"""The findings that fail the gate, in the order they are reported."""
ALLOWABLE: tuple[str, ...] = ("removed", "crashes")
"""The gates a flag can waive (--allow-removed, --allow-crashes)."""
_RANK = {"pass": 0, "expected_divergence": 1, "fail": 2}
_TINY = 1e-30


def key(r: analysis.Record) -> tuple[Any, ...]:
    """What matches a comparison across runs: node id, component, pair, dtype, layer, stage."""
    return (
        r.get("node_id"),
        r.get("component"),
        analysis.pair_name(r),
        analysis.dtype_name(r),
        r.get("layer"),
        r.get("stage"),
    )


def key_text(k: tuple[Any, ...]) -> str:
    """A `key` for people: "NODE_ID [component pair dtype layer N stage]"."""
    node_id, component, pair, dtype, layer, stage = k
    where = "".join(f" {x}" for x in (f"layer {layer}" if layer is not None else None, stage) if x is not None)
    return f"{node_id} [{component} {pair} {dtype}{where}]"


def worst_by_key(records: Iterable[analysis.Record]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per key: the worst of each metric, the worst verdict and the budgets (from the record that set the worst)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in analysis.counted(records):
        verdict = analysis.classify(r)
        if verdict not in _RANK:  # controls must fail, crashes have no metrics
            continue
        row = out.setdefault(key(r), {"verdict": "pass", "budgets": {}, **dict.fromkeys(m for m, _ in METRICS)})
        if _RANK[verdict] > _RANK[row["verdict"]]:
            row["verdict"] = verdict
        tol = r.get("tolerance") or {}
        values = {
            "max_abs_rms": analysis.normalized(r),
            "mae_rms": analysis.normalized(r, "mae"),
            "kl": analysis.num((r.get("metrics") or {}).get("kl")),
        }
        for metric, budget_key in METRICS:
            v = values[metric]
            if analysis.worse(v, row[metric]):
                row[metric] = v
            budget = analysis.num(tol.get(budget_key))
            if budget is not None:
                row["budgets"][metric] = budget
    return out


def compare(
    old: Iterable[analysis.Record],
    new: Iterable[analysis.Record],
    *,
    factor: float = 2.0,
    floor: float = 0.01,
    allow: Iterable[str] = (),
) -> dict[str, list[Any]]:
    """The gate's findings; each item is a dict with "key" (text).

    Returns:
        The lists of `GATES` (regressions, new_failures, removed, crashes, empty) and, not gated, fixed and added; then
        `allowed` (the gates waived by `allow`, "removed" and/or "crashes") and `failing` (the gates with an item and
        not allowed: the gate fails when it is not empty).
    """
    allowed = sorted(set(allow))
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    if set(allowed) - set(ALLOWABLE):
        raise ValueError(f"only {ALLOWABLE} can be allowed, got {allowed}")
    new = list(new)
    before, after = worst_by_key(old), worst_by_key(new)
    result: dict[str, list[Any]] = {g: [] for g in GATES} | {"fixed": [], "added": []}
    for k, now in sorted(after.items(), key=lambda kv: str(kv[0])):
        was = before.get(k)
        if was is None:
            result["added"].append({"key": key_text(k), "verdict": now["verdict"]})
            if now["verdict"] == "fail":
                result["new_failures"].append({"key": key_text(k), "old_verdict": None, "new_verdict": "fail"})
            continue
        if now["verdict"] == "fail" and was["verdict"] != "fail":
            result["new_failures"].append({"key": key_text(k), "old_verdict": was["verdict"], "new_verdict": "fail"})
        elif was["verdict"] == "fail" and now["verdict"] != "fail":
            result["fixed"].append({"key": key_text(k), "old_verdict": "fail", "new_verdict": now["verdict"]})
        result["regressions"] += _regressions(k, was, now, factor=factor, floor=floor)
    gone = sorted((k for k in before if k not in after), key=str)
    result["removed"] = [{"key": key_text(k), "verdict": before[k]["verdict"]} for k in gone]
    result["crashes"] = [{"key": analysis.crash_name(r), "failures": r.get("failures")} for r in analysis.crashes(new)]
    if not analysis.count(new)["comparisons"]:
        result["empty"] = [{"key": "the new run recorded none"}]
    result["allowed"] = allowed
    result["failing"] = [g for g in GATES if result[g] and g not in allowed]
    return result


def _regressions(
    k: tuple[Any, ...], was: dict[str, Any], now: dict[str, Any], *, factor: float, floor: float
) -> list[dict[str, Any]]:
    out = []
    for metric, _ in METRICS:
        o, n = was[metric], now[metric]
        if o is None or n is None:
            continue
        budget = now["budgets"].get(metric)
        base = max(o, floor * budget) if budget else max(o, _TINY)
        nonfinite = not math.isfinite(n) and math.isfinite(o)
        if nonfinite or (math.isfinite(n) and n > factor * base):
            ratio = math.inf if nonfinite or o == 0 else n / o
            out.append({"key": key_text(k), "metric": metric, "old": o, "new": n, "ratio": ratio, "budget": budget})
    return out


def format_text(result: dict[str, list[Any]], *, factor: float) -> str:
    """The command's report: one line per finding of each gate and per fix, the totals, then the gate's outcome."""

    def tag(name: str, gate: str) -> str:  # upper case where the finding fails the gate
        return f"{name} (allowed)" if gate in result["allowed"] else name.upper()

    def t(x: float | None) -> str:
        return analysis.text(x, ".3g")

    lines = []
    for r in result["regressions"]:
        budget = f", budget {t(r['budget'])}" if r["budget"] is not None else ""
        lines.append(f"REGRESSION {r['metric']}: {t(r['old'])} -> {t(r['new'])} (x{t(r['ratio'])}{budget}) {r['key']}")
    lines += [f"NEW FAILURE (was {r['old_verdict'] or 'absent'}): {r['key']}" for r in result["new_failures"]]
    lines += [f"{tag('removed', 'removed')}: {r['key']} (was {r['verdict']})" for r in result["removed"]]
    lines += [f"{tag('worker crash', 'crashes')}: {r['key']}" for r in result["crashes"]]
    lines += [f"NO COMPARISONS: {r['key']}" for r in result["empty"]]
    lines += [f"fixed (now {r['new_verdict']}): {r['key']}" for r in result["fixed"]]
    lines.append(
        f"{len(result['regressions'])} metric regression(s) beyond x{factor:g}, {len(result['new_failures'])} new "
        f"failure(s), {len(result['removed'])} removed, {len(result['crashes'])} worker crash(es), "
        f"{len(result['fixed'])} fixed, {len(result['added'])} added"
    )
    lines.append(f"gate: FAIL ({', '.join(result['failing'])})" if result["failing"] else "gate: pass")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`python -m reports diff`: prints the skipped lines and `format_text`; exits 1 when the gate fails."""
    old = recordfile.read(args.old, require_records=True)
    new = recordfile.read(args.new, require_records=True)
    for line in old.warnings() + new.warnings():
        print(line)
    result = compare(old.records, new.records, factor=args.factor, floor=args.floor, allow=allowed(args))
    print(format_text(result, factor=args.factor))
    return 1 if result["failing"] else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `diff` command's arguments to `parser` (a subcommand parser of reports/__main__.py)."""
    parser.add_argument("old", help="records of the previous run")
    parser.add_argument("new", help="records of this run")
    add_gate_arguments(parser)


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The gate's options, shared by `diff` and `render --previous`: factor, floor, allow-removed, allow-crashes."""
    parser.add_argument(
        "--factor", type=_bound(1, "> 1"), default=2.0, help="a metric regresses when it grows beyond this factor (> 1)"
    )
    parser.add_argument(
        "--floor",
        type=_bound(0, ">= 0", strict=False),
        default=0.01,
        help="old values below floor x budget count as floor x budget (default 0.01)",
    )
    parser.add_argument(
        "--allow-removed", action="store_true", help="comparisons missing from NEW do not fail the gate"
    )
    parser.add_argument("--allow-crashes", action="store_true", help="worker crashes in NEW do not fail the gate")


def allowed(args: argparse.Namespace) -> tuple[str, ...]:
    """The gates that `add_gate_arguments`' flags waive."""
    return tuple(g for g, flag in zip(ALLOWABLE, (args.allow_removed, args.allow_crashes), strict=True) if flag)


def _bound(least: float, want: str, *, strict: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        if not (x > least if strict else x >= least):  # NaN fails both
            raise argparse.ArgumentTypeError(f"must be a number {want}, got {text!r}")
        return x

    return parse
