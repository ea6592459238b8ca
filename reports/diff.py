"""Per-metric regressions between two runs: `python -m reports diff OLD.jsonl NEW.jsonl [--factor 2.0]`.

Comparisons are matched on (node id, component, pair, dtype, layer, stage); negative controls and worker crashes are
left out (a control must fail; a crash has no metrics). Per key the worst value of each run is compared:
max|d|/rms(ref), mae/rms(ref) and, for logits, KL. A metric regresses when

    new > factor * max(old, floor * budget)

where `budget` is the policy's bound for that metric (atol, mae, kl) in the new run, so that an error moving from
exactly 0 to 1e-9 of a 1e-5 budget is not a regression while one that grows 2x and matters is. A non-finite new value
where the old one was finite always regresses. A key that failed in NEW but passed (or did not exist) in OLD is a new
failure. The command exits 1 when there is any regression or new failure, else 0.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from typing import Any

from reports import analysis, recordfile

METRICS: tuple[tuple[str, str], ...] = (("max_abs_rms", "atol"), ("mae_rms", "mae"), ("kl", "kl"))
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
    old: Iterable[analysis.Record], new: Iterable[analysis.Record], *, factor: float = 2.0, floor: float = 0.01
) -> dict[str, list[dict[str, Any]]]:
    """Regressions, new failures, fixed failures, and keys only in one run. Each item is a dict with "key" (text)."""
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    before, after = worst_by_key(old), worst_by_key(new)
    result: dict[str, list[dict[str, Any]]] = {"regressions": [], "new_failures": [], "fixed": [], "added": []}
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
        for metric, _ in METRICS:
            o, n = was[metric], now[metric]
            if o is None or n is None:
                continue
            budget = now["budgets"].get(metric)
            base = max(o, floor * budget) if budget else max(o, _TINY)
            nonfinite = not math.isfinite(n) and math.isfinite(o)
            if nonfinite or (math.isfinite(n) and n > factor * base):
                ratio = math.inf if nonfinite or o == 0 else n / o
                result["regressions"].append(
                    {"key": key_text(k), "metric": metric, "old": o, "new": n, "ratio": ratio, "budget": budget}
                )
    result["removed"] = [{"key": key_text(k), "verdict": v["verdict"]} for k, v in before.items() if k not in after]
    return result


def failing(result: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether `compare` found a regression or a new failure (the command then exits 1)."""
    return bool(result["regressions"] or result["new_failures"])


def format_text(result: dict[str, list[dict[str, Any]]], *, factor: float) -> str:
    """The command's report: one line per regression, new failure and fix, then the totals."""
    lines = []
    for r in result["regressions"]:
        budget = f", budget {r['budget']:.3g}" if r["budget"] is not None else ""
        lines.append(
            f"REGRESSION {r['metric']}: {r['old']:.3g} -> {r['new']:.3g} (x{r['ratio']:.3g}{budget}) {r['key']}"
        )
    for r in result["new_failures"]:
        lines.append(f"NEW FAILURE (was {r['old_verdict'] or 'absent'}): {r['key']}")
    for r in result["fixed"]:
        lines.append(f"fixed (now {r['new_verdict']}): {r['key']}")
    lines.append(
        f"{len(result['regressions'])} metric regression(s) beyond x{factor:g}, {len(result['new_failures'])} new "
        f"failure(s), {len(result['fixed'])} fixed, {len(result['added'])} comparison(s) added, "
        f"{len(result['removed'])} removed"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`python -m reports diff`: prints the skipped lines and `format_text`; exits 1 when `failing`."""
    old, new = recordfile.read(args.old), recordfile.read(args.new)
    for line in old.warnings() + new.warnings():
        print(line)
    result = compare(old.records, new.records, factor=args.factor, floor=args.floor)
    print(format_text(result, factor=args.factor))
    return 1 if failing(result) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `diff` command's arguments to `parser` (a subcommand parser of reports/__main__.py)."""
    parser.add_argument("old", help="records of the previous run")
    parser.add_argument("new", help="records of this run")
    parser.add_argument("--factor", type=float, default=2.0, help="a metric regresses when it grows beyond this factor")
    parser.add_argument(
        "--floor",
        type=float,
        default=0.01,
        help="old values below floor x budget count as floor x budget (default 0.01)",
    )
