"""The report's charts drawn by matplotlib, returned as inline SVG markup (no files, no external references): per-layer
drift of every pair of a component and dtype (`drift_svg`) and a metric over the runs of the history (`history_svg`).

Uses `matplotlib.figure.Figure` directly (no pyplot state, no GUI backend). Text stays text (`svg.fonttype: none`), so
a chart is a few kB; the XML prolog, DOCTYPE and metadata are dropped so that the markup embeds in HTML and names no
external URL.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")  # a headless backend even where a display is set; this module never opens a window
from matplotlib.figure import Figure

_PALETTE = ("#1f5fbf", "#d9730d", "#2a9d4b", "#8e44ad", "#c2185b", "#00838f", "#6d4c41", "#7f7f7f")
"""One colour per run of a drift chart (per pair), in run order."""
_STAGES = {"propagated": ("-", "o", "propagated"), "teacher_forced": ("--", "s", "teacher-forced")}
"""Per stage of a drift chart: line style, marker, legend name."""
BUDGET_COLOR = "#c00000"
EXACT = "exact 0"  # the y label of the floor row, where errors that are exactly zero are drawn
FIRST = "first-over-budget"  # the SVG group id (gid) of each first-layer-over-budget mark
MAX_X_LABELS = 48  # more layers than this: every k-th layer labelled
MAX_Y_TICKS = 8  # decades labelled on the log axis at most
_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
FLOOR = 1e-12  # where an exact zero is drawn on a log axis when no error is positive


def drift_svg(chart: dict[str, Any], *, title: str | None = None) -> str:
    """One chart of a component x dtype (an item of `analysis.drift_charts`): max|d|/rms per layer of every run in it
    overlaid, a colour per run (pair) and a line style per stage (propagated solid, teacher-forced dashed).

    The x axis holds the layers in index order, labelled with their `layer_name` (else the index), upright and thinned
    to `MAX_X_LABELS` when many. An error that is exactly 0 is drawn hollow on the "exact 0" row, a decade under the
    smallest error or budget (so a tiny nonzero error never sits on it); a non-finite one leaves a gap. The budget
    (atol) is a dashed step, one per run where the runs' budgets differ. The first layer over budget of each run and
    stage is an X on a dotted line, and the legend names it per run and stage ("first over budget: temporal 3 (layer
    4)")."""
    runs = chart["runs"]
    points = [p for run in runs for s in run["stages"].values() for p in s["points"]]
    names = _layer_names(points)
    series = _series(runs)
    upright = len(names) * max(map(len, names.values()), default=0) > 50
    bottom = 0.5 + (0.06 * max(map(len, names.values())) if upright else 0.0)  # inches under the axes
    plot_w, height = max(4.0, min(14.0, 0.2 * len(names))), 2.6 + bottom
    legend_w = 0.7 + 0.052 * max(len(label) for *_, label in series)  # about 0.05 in a character at 7 pt
    width = 0.8 + plot_w + legend_w
    fig = Figure(figsize=(width, height), dpi=72)
    fig.subplots_adjust(left=0.7 / width, right=(0.8 + plot_w) / width, top=1 - 0.3 / height, bottom=bottom / height)
    ax = fig.add_subplot()
    exact = any(p["max_abs_rms"] == 0 for p in points)
    floor = _log_axis(ax, [p[k] for p in points for k in ("max_abs_rms", "budget")], exact=exact)
    marked = False  # a first-over-budget X drawn: the legend explains it
    for color, stage, s, label in series:
        style, marker, _ = _STAGES.get(stage, (":", "^", stage))
        xs = [p["layer"] for p in s["points"]]
        ys = [_plottable(p["max_abs_rms"], floor) for p in s["points"]]
        ax.plot(xs, ys, linestyle=style, marker=marker, color=color, linewidth=1.4, markersize=4, label=label)
        zeros = [x for x, p in zip(xs, s["points"], strict=True) if p["max_abs_rms"] == 0]
        if zeros:
            hollow = {"markerfacecolor": "white", "markeredgecolor": color}
            ax.plot(zeros, [floor] * len(zeros), linestyle="none", marker=marker, markersize=6, **hollow)
        first = s["first_diverging"]
        if first is not None:
            ax.axvline(first, color=color, linestyle=":", linewidth=1)
            y = ys[xs.index(first)]
            if not math.isnan(y):  # a non-finite error: the dotted line alone marks the layer
                ax.plot([first], [y], marker="X", color=BUDGET_COLOR, markeredgecolor=color, markersize=9, gid=FIRST)
                marked = True
    _budget_steps(ax, runs)
    if exact:
        ax.plot([], [], "o", markerfacecolor="white", color="#555555", label=f"{EXACT} (hollow)")
    if marked:
        ax.plot([], [], "X", color=BUDGET_COLOR, markersize=9, label="first layer over budget")
    layers = sorted(names)
    shown = layers[:: math.ceil(len(layers) / MAX_X_LABELS)] if layers else []
    ax.set_xticks(shown, [names[x] for x in shown], rotation=90 if upright else 0, fontsize=6 if upright else 7)
    if layers:
        ax.set_xlim(layers[0] - 0.5, layers[-1] + 0.5)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("max|d| / rms(ref)", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    control = f" control={chart['control']}" if chart["control"] else ""
    ax.set_title(title or f"{chart['component']} {chart['dtype']}{control}", fontsize=9)
    return _svg(fig, tight=False)  # fixed margins: tight_layout would double the time a chart takes


def _series(runs: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(colour, stage, stage's points and first layer over budget, legend label) per run and stage of a drift chart:
    a colour per run, labelled with its pair (and its test where two runs share a pair)."""
    repeated = len({run["pair"] for run in runs}) < len(runs)
    out = []
    for i, run in enumerate(runs):
        name = f"{run['pair']} {run['node_id'].split('::')[-1]}" if repeated else run["pair"]
        for stage, s in run["stages"].items():
            first = s["first_diverging"]
            note = "within budget" if first is None else f"first over budget: {s['first_diverging_name']}"
            label = f"{name} {_STAGES.get(stage, (None, None, stage))[2]}: {note}"
            out.append((_PALETTE[i % len(_PALETTE)], stage, s, label))
    return out


def _log_axis(ax: Any, values: list[float | None], *, exact: bool) -> float:
    """A log y axis labelled by decade (at most `MAX_Y_TICKS`) from the floor, the decade under the smallest positive
    finite value of `values`, whose row is labelled `EXACT` when `exact` (a zero is drawn there); returns the floor."""
    positive = [v for v in values if _positive(v)]
    low = math.floor(math.log10(min(positive))) - 1 if positive else round(math.log10(FLOOR))
    high = max(math.ceil(math.log10(max(positive))), low + 1) if positive else low + 1
    ax.set_yscale("log")
    decades = list(range(low, high + 1, math.ceil((high - low + 1) / MAX_Y_TICKS)))
    ax.set_yticks([10.0**e for e in decades], [EXACT if exact and e == low else f"1e{e}" for e in decades], fontsize=7)
    ax.minorticks_off()
    ax.set_ylim(10 ** (low - 0.3), 10 ** (high + 0.2))
    if exact:
        ax.axhline(10.0**low, color="#999999", linestyle=":", linewidth=0.8)
    return 10.0**low


def _layer_names(points: list[dict[str, Any]]) -> dict[int, str]:
    """Layer index -> its axis label: the first `layer_name` recorded for it, else the index."""
    names: dict[int, str | None] = {}
    for p in points:
        if names.get(p["layer"]) is None:
            names[p["layer"]] = p.get("layer_name")
    return {x: name or str(x) for x, name in names.items()}


def _budget_steps(ax: Any, runs: list[dict[str, Any]]) -> None:
    """The budget (atol) per layer as a dashed step: one red step when every run has the same budget at each layer,
    else one per run in its colour."""
    per_run = [{p["layer"]: p["budget"] for s in run["stages"].values() for p in s["points"]} for run in runs]
    per_run = [{x: b for x, b in budgets.items() if _positive(b)} for budgets in per_run]
    merged: dict[int, set[float]] = {}
    for budgets in per_run:
        for x, b in budgets.items():
            merged.setdefault(x, set()).add(b)
    if not merged:
        return
    if all(len(bs) == 1 for bs in merged.values()):
        steps = [({x: next(iter(bs)) for x, bs in merged.items()}, BUDGET_COLOR, "budget (atol)")]
    else:
        steps = [
            (budgets, _PALETTE[i % len(_PALETTE)], f"{run['pair']} budget (atol)")
            for i, (run, budgets) in enumerate(zip(runs, per_run, strict=True))
            if budgets
        ]
    for budgets, color, label in steps:
        xs = sorted(budgets)
        ax.step(xs, [budgets[x] for x in xs], where="mid", color=color, linestyle="--", linewidth=1, label=label)


def history_svg(series: dict[str, Any], *, title: str | None = None, last: int = 40) -> str:
    """One chart: the worst max|d|/rms of the `last` runs of `series` (an item of `reports.trends.series`), x labelled
    with each run's short commit and date, the budget (atol) dashed, failing runs marked with a red X and the run a
    finding names (failing since, left its band) with a dotted line."""
    points = series["points"][-last:]
    fig = Figure(figsize=(6.4, 3.2), dpi=72)
    ax = fig.add_subplot()
    positive = [p["worst"] for p in points if p["worst"] is not None and 0 < p["worst"] < math.inf]
    floor = min(positive) / 10 if positive else FLOOR
    xs = list(range(len(points)))
    ys = [_plottable(p["worst"], floor) for p in points]
    ax.plot(xs, ys, marker="o", color="#1f5fbf", label="worst max|d|/rms", linewidth=1.5, markersize=4)
    bad = [(x, y) for x, y, p in zip(xs, ys, points, strict=True) if p["failing"] and not math.isnan(y)]
    if bad:
        ax.plot(*zip(*bad, strict=True), marker="X", color="#c00000", markersize=9, linestyle="none", label="failing")
    if any(p["budget"] is not None for p in points):
        budgets = [math.nan if p["budget"] is None else p["budget"] for p in points]
        ax.step(xs, budgets, where="mid", color="#c00000", linestyle="--", linewidth=1, label="budget (atol)")
    for finding, color, label in (("left_band", "#d9730d", "left its band"), ("failing_since", "#c00000", "failing")):
        found = series.get(finding)
        x = next((x for x, p in zip(xs, points, strict=True) if found and p["run"] == found["run"]), None)
        if x is not None:
            ax.axvline(x, color=color, linestyle=":", linewidth=1.2, label=f"{label} since")
    labels = [f"{p['run']['short']}\n{p['run']['date'][:10]}" for p in points]
    ax.set_xticks(xs, labels, rotation=0 if len(xs) <= 8 else 90, fontsize=7 if len(xs) <= 8 else 6)
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_yscale("log")
    ax.set_ylabel("max|d| / rms(ref)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or f"{series['component']} {series['pair']} {series['dtype']}", fontsize=9)
    ax.tick_params(axis="y", which="both", labelsize=8)
    fig.subplots_adjust(left=0.15, right=0.98, top=0.91, bottom=0.2 if len(xs) <= 8 else 0.3)
    return _svg(fig, tight=False)  # fixed margins: tight_layout would double the time a chart takes


def _svg(fig: Figure, *, tight: bool = True) -> str:
    if tight:
        fig.tight_layout()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "moshi-parity"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _METADATA.sub("", _PROLOG.sub("", buf.getvalue(), count=1))


def _positive(x: float | None) -> bool:
    return x is not None and 0 < x < math.inf


def _plottable(x: float | None, floor: float) -> float:
    """A value the log axis can show: zero at `floor`, NaN/Inf and unknown as NaN (a gap in the line)."""
    if x is None or not math.isfinite(x):
        return math.nan
    return max(x, floor)
