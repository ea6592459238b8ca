"""The report's per-layer drift chart and the matrix's budget fraction, from synthetic records: three pairs over one
component x dtype, both stages, named layers (embedding, temporal i, depth j), an exact zero and one pair whose
propagated error crosses its budget at a known layer, just under it the layer before."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from parity.harness.record_cases import rec, write
from reports import analysis, charts
from reports.__main__ import main as cli

NAMES = ("embedding", "temporal 0", "temporal 1", "temporal 2", "temporal 3", "depth 0", "depth 1")
PAIRS = (("kyutai", "flax"), ("hf", "flax"), ("ref", "flax"))
ATOL = 1e-5  # rec()'s budget: tolerance atol, in units of rms(ref) (rec's ref_rms is 1)


def _records(cross: int) -> list[dict[str, Any]]:
    """lm_hidden float32 records of every pair, stage and layer: 0 (exact) at the embedding, 1e-7 * layer elsewhere;
    kyutai->flax propagated at 0.9 of the budget the layer before `cross` and at 3x the budget from `cross` on."""
    out = []
    for pair in PAIRS:
        for stage in ("propagated", "teacher_forced"):
            for layer, name in enumerate(NAMES):
                err = 1e-7 * layer
                if pair == PAIRS[0] and stage == "propagated" and layer >= cross - 1:
                    err = 3 * ATOL if layer >= cross else 0.9 * ATOL
                verdict = "fail" if err > ATOL else "pass"
                r = rec("lm_hidden", pair=pair, layer=layer, stage=stage, max_abs=err, verdict=verdict)
                out.append({**r, "layer_name": name})
    return out


def _x_ticks(svg: str) -> list[tuple[float, str, bool]]:
    """(x position, label, upright) of the x axis' ticks of a matplotlib SVG (groups "xtick_N": a mark, a text)."""
    ticks = re.findall(r'<g id="xtick_\d+">.*?<use [^>]*x="([\d.]+)".*?<text ([^>]*)>([^<]*)</text>', svg, re.S)
    return [(float(x), text, "rotate(-90)" in attributes) for x, attributes, text in ticks]


def _x_labels(svg: str) -> dict[float, str]:
    return {x: text for x, text, _ in _x_ticks(svg)}


def _first_marks(svg: str) -> list[float]:
    """The x positions of the first-over-budget marks (the X markers' groups, `charts.FIRST`)."""
    return [float(x) for x in re.findall(rf'<g id="{charts.FIRST}">\s*<path d="M ([\d.]+) ', svg)]


@pytest.mark.parametrize(("cross", "before", "after"), [(4, "temporal 2", "depth 0"), (6, "depth 0", None)])
def test_one_overlaid_chart_names_the_first_layer_over_budget(
    tmp_path: Path, cross: int, before: str, after: str | None
) -> None:
    """One chart for lm_hidden float32 with the three pairs overlaid, the layers named on its axis, the exact zero
    labelled exact, and the first layer over budget named and marked there: not the layer before (at 0.9 of the
    budget) nor the one after (over too), which an off-by-one would name."""
    src = write(tmp_path / "r.jsonl", _records(cross))
    assert cli(["render", str(src), "-o", str(tmp_path / "html")]) == 0
    html = (tmp_path / "html" / "report.html").read_text()
    [svg] = re.findall(r"<svg.*?</svg>", html, re.S)  # one chart, not one per pair
    labels = _x_labels(svg)
    assert list(labels.values()) == list(NAMES)  # in index order
    crossed = f"{NAMES[cross]} (layer {cross})"
    legend = [f"{a}-&gt;{b} {stage}" for a, b in PAIRS for stage in ("propagated", "teacher-forced")]
    notes = [f"first over budget: {crossed}"] + ["within budget"] * 5
    for entry, note in zip(legend, notes, strict=True):
        assert f">{entry}: {note}</text>" in svg
    assert f"first over budget: {before} " not in svg and (after is None or f"budget: {after} " not in svg)
    [x] = _first_marks(svg)
    assert labels[x] == NAMES[cross]
    assert f"first over budget at {crossed}</b>" in html
    ticks = re.findall(r'<g id="ytick_\d+">.*?<text [^>]*>([^<]*)</text>', svg, re.S)
    assert ticks[:2] == [charts.EXACT, "1e-7"]  # the exact zero on its own row, the smallest error (1e-7) a decade up
    assert f">{charts.EXACT} (hollow)</text>" in svg


def test_many_layers_stay_legible() -> None:
    """41 named layers (embedding, 32 temporal, 8 depth): every one labelled, upright."""
    names = ["embedding", *(f"temporal {i}" for i in range(32)), *(f"depth {j}" for j in range(8))]
    recs = [
        {**rec("lm_hidden", layer=i, stage="propagated", max_abs=1e-7 * (i + 1)), "layer_name": n}
        for i, n in enumerate(names)
    ]
    [chart] = analysis.drift_charts(analysis.drift(recs))
    svg = charts.drift_svg(chart)
    assert [(text, upright) for _, text, upright in _x_ticks(svg)] == [(n, True) for n in names]
    assert _first_marks(svg) == []


def test_layers_without_names_are_numbered() -> None:
    """Records without `layer_name` (written before it existed): the axis shows the index, the legend "layer N"."""
    recs = [
        rec("lm_hidden", layer=i, stage="propagated", max_abs=e, verdict="fail" if e > ATOL else "pass")
        for i, e in enumerate((1e-7, 2e-7, 3e-5))
    ]
    [chart] = analysis.drift_charts(analysis.drift(recs))
    svg = charts.drift_svg(chart)
    assert [(text, upright) for _, text, upright in _x_ticks(svg)] == [("0", False), ("1", False), ("2", False)]
    assert "first over budget: layer 2</text>" in svg and charts.EXACT not in svg  # no zero: no exact row label


@pytest.mark.parametrize(
    ("metrics", "kl_budget", "ratio"),
    [
        ({"max_abs": 4.2e-6}, None, 0.42),  # max|d|/rms / atol
        ({"max_abs": 1e-6, "mae": 1.6e-6}, None, 0.8),  # mae/rms / mae budget (2e-6) is the larger
        ({"max_abs": 1e-6, "kl": 0.5}, 0.25, 2.0),  # kl / kl budget
        ({"max_abs": 1e-6, "kl": 0.5}, None, 0.1),  # no kl budget: not weighed
        ({"max_abs": 0.0, "mae": 0.0}, None, 0.0),
        ({"max_abs": "NaN"}, None, math.nan),
        ({"max_abs": "Infinity"}, None, math.inf),
    ],
)
def test_budget_ratio(metrics: dict[str, Any], kl_budget: float | None, ratio: float) -> None:
    r = rec("logits", max_abs=1e-7)
    r["metrics"].update({"mae": 0.0, **metrics})
    r["tolerance"]["kl"] = kl_budget
    got = analysis.budget_ratio(r)
    assert got is not None and (math.isnan(got) if math.isnan(ratio) else got == pytest.approx(ratio))
    assert analysis.over_budget(got) == (not ratio <= 1)


def test_matrix_shows_the_worst_fraction_of_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The matrix cell of the crossing pair shows 3x its budget, over; the others their largest fraction, under; the
    summary prints the same, "!" marking the one over."""
    src = write(tmp_path / "r.jsonl", _records(4))
    rows = {row["pair"]: row for row in analysis.matrix(analysis.counted(_records(4)))}
    assert rows["kyutai->flax"]["budget_ratio"] == pytest.approx(3.0) and rows["kyutai->flax"]["over_budget"]
    assert rows["hf->flax"]["budget_ratio"] == pytest.approx(0.06) and not rows["hf->flax"]["over_budget"]
    assert cli(["summary", str(src)]) == 0
    shown = {line.split()[1]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:4]}
    assert shown == {"hf->flax": "0.06x", "kyutai->flax": "3x!", "ref->flax": "0.06x"}
    assert cli(["render", str(src), "-o", str(tmp_path / "html")]) == 0
    html = (tmp_path / "html" / "report.html").read_text()
    assert '<td class="n over">3x</td>' in html and '<td class="n">0.06x</td>' in html
