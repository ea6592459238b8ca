"""A float32 oracle for bfloat16 runs: how far each bf16 implementation is from exact arithmetic on the same weights.

bf16-vs-bf16 comparisons (parity/harness/policy.py) only bound the port by upstream's own bf16 noise. Here every bf16
implementation is measured against one float32 run of the same weights and inputs, so a port can be held to a
multiple of upstream's own bf16 error (`policy.BF16_ORACLE`).

    run = oracle_run("attention", cfg, impls=("kyutai", "hf", "ref", "flax"), seed=0)
    out = run.outputs({"x": bf16_representable(x), "positions": positions})
    out.error("flax", "y").rel_rms  # ||flax - oracle|| / ||oracle||

Weights: `implementations.build` draws them once in float32 and rounds them to bf16 (the shared bf16 weights); the
oracle is kyutai in float32 loaded with those rounded weights, upcast exactly, so that bf16 and oracle differ only in
arithmetic. Inputs are bf16-representable (`bf16_representable`), for the same reason. kyutai is the oracle because it
builds every component compared here and its float32 agrees with ours to ~1e-6 x rms (the policy's fp32 entries),
three decades under any bf16 error: a float64 run would not change a ratio.

Metrics (both computed in float64 where the oracle is finite: kyutai's logits are NaN in the delay tail):
    rel_rms  ||cand - oracle||_2 / ||oracle||_2: the mean-square error, the statistic of many roundings. A max-abs
             error is one element's bad luck (one softmax near a tie) and varies several-fold between seeds.
    kl       logits only: mean over positions of KL(softmax(oracle) || softmax(cand)), what sampling sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from moshi_spec import LMConfig, TransformerConfig
from parity.harness import adapters
from parity.harness.adapters.base import Built, Inputs, Outputs
from parity.harness.implementations import Models, build
from parity.harness.strategies import random_codes

ORACLE = "kyutai"
"""The implementation run in float32 as the oracle (see the module docstring)."""


def bf16_representable(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16 (nearest even), as float32: an input every dtype reads exactly."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


@dataclass(frozen=True)
class Error:
    """One bf16 output against the oracle (see the module docstring)."""

    rel_rms: float
    kl: float | None = None


def error(oracle: np.ndarray, candidate: np.ndarray, *, logits: bool = False) -> Error:
    """`candidate`'s error against `oracle`, over the positions where the oracle is finite.

    Raises:
        ValueError: shapes differ, or the candidate is not finite where the oracle is.
    """
    o, c = np.asarray(oracle, np.float64), np.asarray(candidate).astype(np.float64)
    if o.shape != c.shape:
        raise ValueError(f"oracle shape {o.shape} != candidate shape {c.shape}")
    valid = np.isfinite(o).all(-1) if logits else np.isfinite(o)
    o, c = o[valid], c[valid]
    if not np.isfinite(c).all():
        raise ValueError(f"candidate has {int((~np.isfinite(c)).sum())} non-finite values where the oracle is finite")
    rel_rms = float(np.sqrt(np.mean((c - o) ** 2) / np.mean(o**2)))
    if not logits:
        return Error(rel_rms)
    log_p, log_q = _log_softmax(o), _log_softmax(c)
    return Error(rel_rms, float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class OracleRun:
    """bf16 implementations of one component and their float32 oracle, sharing the bf16-rounded weights."""

    models: Models  # bfloat16
    oracle: Built  # float32
    impls: tuple[str, ...]

    def outputs(self, inputs: Inputs, *, capture: tuple[str, ...] = ()) -> Measured:
        """Runs the oracle and every implementation on the same (bf16-representable) inputs."""
        oracle = adapters.adapter(ORACLE).run(self.oracle, inputs, capture=capture)
        runs = {impl: self.models.run(impl, inputs, capture=capture) for impl in self.impls}
        return Measured(oracle, runs)


@dataclass
class Measured:
    """The oracle's outputs and each bf16 implementation's, by label."""

    oracle: Outputs
    runs: dict[str, Outputs]

    def error(self, impl: str, key: str, *, logits: bool = False, index: Any = ()) -> Error:
        """impl's error on output `key` (`index`: e.g. one layer of "hidden")."""
        return error(self.oracle[key][index], self.runs[impl][key][index], logits=logits)

    def rounding(self, key: str, *, logits: bool = False, index: Any = ()) -> Error:
        """The error of the oracle's output rounded to bf16 once: what no bf16 output beats on average."""
        oracle = np.asarray(self.oracle[key][index])
        return error(oracle, oracle.astype(ml_dtypes.bfloat16), logits=logits)


def oracle_run(component: str, cfg: Any, *, impls: Sequence[str], seed: int = 0) -> OracleRun:
    """Builds `impls` in bfloat16 with seeded weights, and the float32 oracle with the same (rounded) weights.

    Raises:
        ValueError: the oracle cannot build the component for cfg, or the weights were not drawn in its format.
    """
    models = build(component, cfg, "bfloat16", impls=impls, seed=seed)
    oracle_adapter = adapters.adapter(ORACLE)
    reason = oracle_adapter.supports(component, cfg)
    if reason:
        raise ValueError(f"oracle {ORACLE} cannot build {component}: {reason}")
    oracle = oracle_adapter.build(component, cfg, dtype="float32", init=False)
    if oracle_adapter.has_weights(component):
        if models.source != ORACLE:
            raise ValueError(f"{component}: weights drawn by {models.source}, the oracle needs them from {ORACLE}")
        oracle_adapter.load(oracle, _upcast(models.states[ORACLE]))
    return OracleRun(models, oracle, tuple(impls))


def _upcast(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bf16 weights as float32, exactly (other dtypes as they are)."""
    return {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v for k, v in state.items()}


# The cases of parity/test_bf16_oracle.py and bench/measure_bf16_oracle.py: each component below and past its
# context window (layers: 4, the tiny LM: 8), kyutai-buildable (positions from 0, head_dim = dim / heads, eps 1e-8).
# A batch of 8 rows: the ratio of two implementations' rounding noise over a few hundred elements (2 rows) varied by
# up to 40% between seeds (the tiny LM's audio logits), 8 rows halve that.
LAYER = TransformerConfig(dim=32, num_heads=4, num_layers=1, ffn_dim=64, context=4, num_kv_heads_override=2)
LM = LMConfig.tiny()
PORTS = ("ref", "flax", "flax[attention=pallas]")
"""The implementations held to upstream's bf16 error (flax[attention=pallas] where attention is involved)."""


@dataclass(frozen=True)
class OracleCase:
    """A component, config and input length; `impls`: the bf16 implementations measured (upstreams first)."""

    component: str
    cfg: Any
    length: int
    impls: tuple[str, ...]
    offsets: tuple[int, ...] = (0,) * 8  # per-row position offsets (kyutai's layers start at 0; its rope does not)
    zero_fraction: float = 0.0  # LM: fraction of zero tokens (-1; HF has none)

    def inputs(self, seed: int) -> dict[str, Any]:
        """Seeded bf16-representable inputs: x (B, T, D) (rope: (B, T, H, head_dim)) at rms 1, or LM codes."""
        rng = np.random.default_rng(1000 + seed)
        batch = len(self.offsets)
        if self.component == "lm":
            return {"codes": random_codes(self.cfg, batch, self.length, seed=seed, zero_fraction=self.zero_fraction)}
        cfg = self.cfg
        shape = (cfg.num_heads, cfg.head_dim) if self.component == "rope" else (cfg.dim,)
        x = bf16_representable(rng.standard_normal((batch, self.length, *shape)))
        positions = np.asarray(self.offsets)[:, None] + np.arange(self.length)[None]
        return {"x": x, "positions": positions.astype(np.int64), "layer_idx": None}

    def outputs(self) -> dict[str, tuple[str, Any, bool]]:
        """name -> (output key, index into it, logits?) of what is measured."""
        if self.component != "lm":
            return {"y": ("y", (), False)}
        hidden = {f"hidden[{i}]": ("hidden", i, False) for i in range(self.cfg.temporal.num_layers + 1)}
        return {**hidden, "text_logits": ("text_logits", (), True), "audio_logits": ("audio_logits", (), True)}


_ATTENTION_IMPLS = ("kyutai", "hf", "ref", "flax", "flax[attention=pallas]")
CASES = {
    "rmsnorm": OracleCase("rmsnorm", LAYER, 16, ("kyutai", "hf", "ref", "flax")),
    "gating_mlp": OracleCase("gating_mlp", LAYER, 16, ("kyutai", "hf", "ref", "flax")),
    "rope": OracleCase("rope", LAYER.replace(rope_layout="interleaved"), 16, ("kyutai", "ref", "flax"), (0, 1000) * 4),
    "attention_short": OracleCase("attention", LAYER, 3, _ATTENTION_IMPLS),
    "attention_long": OracleCase("attention", LAYER, 16, _ATTENTION_IMPLS),
    "decoder_short": OracleCase("decoder_layer", LAYER, 3, _ATTENTION_IMPLS),
    "decoder_long": OracleCase("decoder_layer", LAYER, 16, _ATTENTION_IMPLS),
    # HF's temporal forward ignores the context window (test_lm's expected divergence): HF only up to it. Nightly
    # only (parity/test_bf16_oracle.py): lm_long covers the same positions and more, against kyutai.
    "lm_short": OracleCase("lm", LM, 8, _ATTENTION_IMPLS),
    "lm_long": OracleCase("lm", LM, 24, ("kyutai", "ref", "flax", "flax[attention=pallas]"), zero_fraction=0.1),
}


def measure(run: OracleRun, case: OracleCase, seed: int) -> tuple[Measured, dict[str, dict[str, Error]]]:
    """Runs `case` (inputs of `seed`) through `run`: output name -> implementation -> error against the oracle
    (plus "bf16(oracle)": the oracle rounded to bf16, `Measured.rounding`)."""
    capture = ("hidden",) if case.component == "lm" else ()
    measured = run.outputs(case.inputs(seed), capture=capture)
    return measured, errors_of(measured, case)


def errors_of(measured: Measured, case: OracleCase) -> dict[str, dict[str, Error]]:
    """Output name -> implementation -> error against the oracle, plus ROUNDING (see `measure`)."""
    return {
        name: {
            impl: measured.error(impl, key, logits=logits, index=index)
            for impl in measured.runs
            if not (impl == "hf" and key == "hidden")  # HF's last one is after its norm
        }
        | {ROUNDING: measured.rounding(key, logits=logits, index=index)}
        for name, (key, index, logits) in case.outputs().items()
    }


ROUNDING = "bf16(oracle)"


def violations(errors: Mapping[str, Mapping[str, Error]], bound: Any, *, ports: Sequence[str] = PORTS) -> list[str]:
    """Every (output, port) whose error exceeds `bound` (`policy.OracleBound`) given the best upstream's error; each
    line names the output, the port, both errors and the ratio. sqrt(KL) is bounded like rel_rms: KL grows with the
    square of the logits' error."""
    lines = []
    for name, per_impl in errors.items():
        upstream = {i: e for i, e in per_impl.items() if i != ROUNDING and adapters.kind(i) == "upstream"}
        rounding = per_impl[ROUNDING]
        for port in (p for p in ports if p in per_impl):
            got = per_impl[port]
            checks = [("rel_rms", lambda e: e.rel_rms)] + (
                [("sqrt(KL)", lambda e: e.kl**0.5)] if got.kl is not None else []
            )
            for metric, value in checks:
                best = min(upstream, key=lambda i: value(upstream[i]))
                if value(got) > bound.limit(value(upstream[best])):
                    lines.append(
                        f"{name}: {port} {metric} {value(got):.3e} > {bound.ratio} x {best} {value(upstream[best]):.3e}"
                        f" (ratio {value(got) / value(upstream[best]):.3f}; one bf16 rounding of the oracle: "
                        f"{value(rounding):.3e})"
                    )
    return lines
