"""The report's charts drawn by matplotlib, returned as inline SVG markup (no files, no external references): per-layer
drift (`drift_svg`) and a metric over the runs of the history (`history_svg`).

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
from matplotlib.ticker import MaxNLocator

_STYLE = {"propagated": ("#1f5fbf", "o", "propagated"), "teacher_forced": ("#d9730d", "s", "teacher-forced")}
_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
FLOOR = 1e-12  # where an exact zero is drawn on the log axis when no error is positive


def drift_svg(run: dict[str, Any], *, title: str | None = None) -> str:
    """One chart: max|d|/rms(ref) per layer for each stage of `run` (an item of `analysis.drift`), the budget, and the
    first diverging layer of each stage marked."""
    fig = Figure(figsize=(6.4, 3.0), dpi=72)
    ax = fig.add_subplot()
    budgets: dict[int, float] = {}
    positive = [
        p["max_abs_rms"]
        for s in run["stages"].values()
        for p in s["points"]
        if p["max_abs_rms"] is not None and 0 < p["max_abs_rms"] < math.inf
    ]
    floor = min(positive) / 10 if positive else FLOOR  # exact zeros sit a decade under the smallest error
    for stage, s in run["stages"].items():
        color, marker, label = _STYLE.get(stage, ("#555555", "^", stage))
        pts = s["points"]
        xs = [p["layer"] for p in pts]
        ys = [_plottable(p["max_abs_rms"], floor) for p in pts]
        ax.plot(xs, ys, marker=marker, color=color, label=f"{label} max|d|/rms", linewidth=1.5, markersize=4)
        for p in pts:
            if p["budget"] is not None:
                budgets.setdefault(p["layer"], p["budget"])
        first = s["first_diverging"]
        if first is not None:
            y = next(_plottable(p["max_abs_rms"], floor) for p in pts if p["layer"] == first)
            ax.axvline(first, color=color, linestyle=":", linewidth=1)
            if math.isnan(y):  # a non-finite error: the dotted line alone marks the layer
                continue
            ax.annotate(
                f"first over budget: layer {first}",
                (first, y),
                xytext=(6, 6),
                textcoords="offset points",
                color=color,
                fontsize=8,
            )
            ax.plot([first], [y], marker="X", color="#c00000", markersize=9, linestyle="none")
    if budgets:
        layers = sorted(budgets)
        ax.step(
            layers,
            [budgets[x] for x in layers],
            where="mid",
            color="#c00000",
            linestyle="--",
            linewidth=1,
            label="budget (atol)",
        )
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("max|d| / rms(ref)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or f"{run['pair']} {run['dtype']}", fontsize=9)
    return _svg(fig)


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


def _plottable(x: float | None, floor: float) -> float:
    """A value the log axis can show: zero at `floor`, NaN/Inf and unknown as NaN (a gap in the line)."""
    if x is None or not math.isfinite(x):
        return math.nan
    return max(x, floor)
