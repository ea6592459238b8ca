"""Code agreement between two quantizers, with every disagreement explained or not (Mimi's RVQ).

A code is an argmin over distances: two correct implementations whose latents differ by float rounding can pick
different centroids where two are nearly equidistant. So codes are not compared for equality alone. For each frame
and row, the FIRST codebook level where the two disagree is examined in float64, from the reference's residual r and
the candidate's residual r' at that level (both follow the same codes up to there, so they differ only by the
latents' rounding): the candidate's pick c' is explained when the reference's own distances put it within what that
difference can move a distance by,

    |r - e[c']| - |r - e[c]| <= 2 |r - r'| + slack,

(each distance moves by at most |r - r'|); slack covers float32 rounding of the distances and centroids. Later levels of
a frame that split follow from the split (residuals differ from there on) and are counted as "cascaded", not judged.
A comparison passes when no first disagreement is unexplained and the agreement over all codes meets the policy's
minimum. The record (component "mimi_codes") carries the agreement, counts and the worst gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from parity.harness.adapters import pair_class
from parity.harness.compare import ParityError, _emit
from parity.harness.policy import CodeBound, code_bound

SLACK = 1e-5
"""Slack on a distance, relative to |r| + |e[c]|: float32 centroids and distances are rounded to ~1e-7 of those
magnitudes, and kyutai's cdist goes through |x|^2 - 2 x.e + |e|^2, which loses more when |x| >> |x - e|."""


@dataclass
class Disagreement:
    """A first disagreement: row, codebook level, frame, and the reference-side distance gap vs its allowance."""

    row: int
    level: int
    frame: int
    reference_code: int
    candidate_code: int
    gap: float  # |r - e[c']| - |r - e[c]| in float64 (>= 0 up to rounding)
    allowance: float  # 2 |r - r'| + SLACK (|r| + |e[c]|)
    explained: bool


@dataclass
class CodeAgreement:
    agreement: float
    codes: int
    first: list[Disagreement] = field(default_factory=list)
    cascaded: int = 0

    @property
    def unexplained(self) -> list[Disagreement]:
        return [d for d in self.first if not d.explained]

    def summary(self) -> str:
        worst = max((d.gap / max(d.allowance, 1e-300) for d in self.first), default=0.0)
        return (
            f"agreement {self.agreement:.6f} over {self.codes} codes; {len(self.first)} first disagreements "
            f"({len(self.unexplained)} unexplained), {self.cascaded} cascaded; worst gap / allowance {worst:.3g}"
        )


def _residuals(latent: np.ndarray, projection: np.ndarray, tables: list[np.ndarray], codes: np.ndarray) -> list:
    """The float64 residual (B, F, dim) entering each level of one residual VQ following `codes` (B, levels, F)."""
    x = np.einsum("od,bdf->bfo", projection.astype(np.float64), np.asarray(latent, np.float64))
    out = []
    for level, table in enumerate(tables):
        out.append(x)
        x = x - table[codes[:, level]]
    return out


def code_agreement(
    ref_codes: np.ndarray,
    cand_codes: np.ndarray,
    *,
    ref_latent: np.ndarray,
    cand_latent: np.ndarray,
    quantizers: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]],
) -> CodeAgreement:
    """Agreement of (B, K, F) codes, each first disagreement explained or not (see the module docstring).

    Args:
        ref_latent, cand_latent: each side's unquantized latent (B, D, F).
        quantizers: (input projection (dim, D), codebook embeddings [(bins, dim)] per level) of each residual VQ in
            code order (Mimi: semantic, then acoustic); together they cover at least K levels.
    """
    ref_codes, cand_codes = np.asarray(ref_codes), np.asarray(cand_codes)
    if ref_codes.shape != cand_codes.shape or ref_codes.ndim != 3:
        raise ValueError(f"codes must both be (B, K, F), got {ref_codes.shape} and {cand_codes.shape}")
    levels = ref_codes.shape[1]
    result = CodeAgreement(agreement=float((ref_codes == cand_codes).mean()), codes=int(ref_codes.size))
    start = 0
    for projection, embeddings in quantizers:  # each residual VQ starts again from the latent
        tables = [t.astype(np.float64) for t in embeddings[: max(0, levels - start)]]
        if not tables:
            break
        group = slice(start, start + len(tables))
        ref_res = _residuals(ref_latent, projection, tables, ref_codes[:, group])
        cand_res = _residuals(cand_latent, projection, tables, ref_codes[:, group])
        differ = ref_codes[:, group] != cand_codes[:, group]
        for b, f in zip(*np.nonzero(differ.any(axis=1)), strict=True):
            level = int(np.argmax(differ[b, :, f]))
            result.cascaded += int(differ[b, level + 1 :, f].sum())
            r, r2, table = ref_res[level][b, f], cand_res[level][b, f], tables[level]
            c, c2 = int(ref_codes[b, start + level, f]), int(cand_codes[b, start + level, f])
            near = float(np.linalg.norm(r - table[c]))
            gap = float(np.linalg.norm(r - table[c2])) - near
            allowance = 2 * float(np.linalg.norm(r - r2)) + SLACK * float(np.linalg.norm(r) + np.linalg.norm(table[c]))
            result.first.append(Disagreement(int(b), start + level, int(f), c, c2, gap, allowance, gap <= allowance))
        start += len(tables)
    if start < levels:
        raise ValueError(f"codes have {levels} levels, the quantizers only {start}")
    return result


def assert_codes(
    ref_codes: np.ndarray,
    cand_codes: np.ndarray,
    *,
    pair: tuple[str, str],
    dtype: str,
    ref_latent: np.ndarray,
    cand_latent: np.ndarray,
    quantizers: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]],
    config: dict | None = None,
    control: str | None = None,
    expected_divergence: str | None = None,
) -> CodeAgreement:
    """`code_agreement`, judged against the policy's CodeBound for (dtype, pair class); emits one record.

    Raises:
        ParityError: an unexplained first disagreement, or agreement below the bound's minimum.
    """
    klass = pair_class(*pair)
    bound: CodeBound = code_bound(dtype, klass)
    result = code_agreement(
        ref_codes, cand_codes, ref_latent=ref_latent, cand_latent=cand_latent, quantizers=quantizers
    )
    failures = [
        f"code at row {d.row} level {d.level} frame {d.frame}: {d.reference_code} -> {d.candidate_code}, distance "
        f"gap {d.gap:.3g} exceeds what the latents' difference explains ({d.allowance:.3g})"
        for d in result.unexplained[:5]
    ]
    if result.agreement < bound.min_agreement:
        failures.append(f"agreement {result.agreement:.6f} < {bound.min_agreement}")
    first_bad = result.unexplained[0] if result.unexplained else None
    diff = np.abs(np.asarray(ref_codes, np.int64) - np.asarray(cand_codes, np.int64))
    verdict = "pass" if not failures else ("expected_divergence" if expected_divergence else "fail")
    _emit(
        {
            "component": "mimi_codes",
            "pair": {"reference": pair[0], "candidate": pair[1]},
            "pair_class": klass,
            "config": config,
            "shapes": {"reference": list(np.shape(ref_codes)), "candidate": list(np.shape(cand_codes))},
            "dtypes": {
                "reference": str(np.asarray(ref_codes).dtype),
                "candidate": str(np.asarray(cand_codes).dtype),
                "expected": dtype,
            },
            "metrics": {
                "max_abs": float(diff.max(initial=0)),
                "max_abs_index": [] if first_bad is None else [first_bad.row, first_bad.level, first_bad.frame],
                "mae": 1.0 - result.agreement,
                "max_rel": max((d.gap / max(d.allowance, 1e-300) for d in result.first), default=0.0),
                "agreement": result.agreement,
                "first_disagreements": len(result.first),
                "unexplained": len(result.unexplained),
                "cascaded": result.cascaded,
            },
            "tolerance": {**asdict(bound), "key": [dtype, "mimi_codes", klass]},
            "verdict": verdict,
            "control": control,
            "expected_divergence": expected_divergence,
            "failures": failures,
        }
    )
    if failures:
        raise ParityError(
            f"mimi_codes [{pair[0]} -> {pair[1]}, {klass}] {dtype}: {result.summary()}\n  " + "\n  ".join(failures),
            metrics=None,
            failures=failures,
        )
    return result
