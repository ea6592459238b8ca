"""Runs streaming generation in kyutai (`LMGen`) and in Flax (`Streamer`), and rebuilds the full-sequence codes a
stream consumed, so that a step-by-step run can be checked against the full forward (parity/test_streaming.py).

Frame bookkeeping (kyutai LMGen, mirrored by models_flax.streaming): the token stream k consumes at step t is its
initial token while t <= delays[k]; otherwise, for a model stream (text, Moshi's audio), the token generated at step
t - 1, and for a user stream the code given at step t - delays[k]. The full forward of codes (B, 1 + n_q, T) consumes
codes[k, t - 1 - delays[k]] at position t, hence codes[k, j] = generated[k][j + delays[k]] for the model streams and
codes[k, j] = user[k][j + 1] for the user's (the user's codes of step 0 are never read, in kyutai as here).

A failure names its place in that layout: `first_difference` names the stream (text, audio codebook c), its delay and
the first differing position of codes, masks or NaN placement; `token_mismatch` names the first token a stream
got wrong in generation order (its column, frame and sampling step) and compares the logits it was sampled from.
"""

from __future__ import annotations

import jax
import numpy as np
import torch

from models_flax.streaming import UNGENERATED, Streamer
from moshi_spec import LMConfig
from parity.harness.adapters.base import device_of
from parity.harness.arrays import dtype_name, to_numpy
from parity.harness.compare import judge
from parity.harness.policy import sized


def user_codes(cfg: LMConfig, batch: int, frames: int, *, seed: int) -> np.ndarray:
    """(B, n_q - dep_q, T) valid user codes."""
    return np.random.default_rng(seed).integers(0, cfg.card, (batch, cfg.n_q - cfg.dep_q, frames)).astype(np.int64)


@torch.no_grad()
def run_lmgen(kyutai_lm, codes: np.ndarray, **lmgen_kwargs) -> np.ndarray:
    """kyutai LMGen over codes (B, U, T) -> (B, 1 + dep_q, T), UNGENERATED where `step` returned None."""
    from moshi.models.lm import LMGen

    gen = LMGen(kyutai_lm, **lmgen_kwargs)
    batch, _, frames = codes.shape
    outs = []
    with gen.streaming(batch):
        for t in range(frames):
            out = gen.step(torch.from_numpy(codes[:, :, t : t + 1]).to(device_of(kyutai_lm)))
            if out is None:
                out = torch.full((batch, 1 + kyutai_lm.dep_q, 1), UNGENERATED)
            outs.append(to_numpy(out[:, :, 0]))
    return np.stack(outs, axis=-1)


def run_steps(streamer: Streamer, codes: np.ndarray, keys: jax.Array | None = None) -> dict[str, np.ndarray]:
    """Streamer.step over codes (B, U, T) from a fresh state -> StepOutput fields stacked on a trailing time axis."""
    state = streamer.init_state(codes.shape[0])
    outs = []
    for t in range(codes.shape[2]):
        out, state = streamer.step(state, codes[:, :, t], None if keys is None else keys[t])
        outs.append(out)
    names = [name for name, value in vars(outs[0]).items() if value is not None]  # None: no extra heads
    return {name: np.stack([to_numpy(getattr(o, name)) for o in outs], axis=-1) for name in names}


def consumed_codes(cfg: LMConfig, user: np.ndarray, run: dict[str, np.ndarray]) -> np.ndarray:
    """The codes (B, 1 + n_q, T) whose full forward consumes, at every position, what the stream consumed."""
    batch, _, frames = user.shape
    generated = np.concatenate([run["text"][:, None], run["audio"]], axis=1)  # (B, 1 + dep_q, T)
    codes = np.zeros((batch, 1 + cfg.n_q, frames), np.int64)
    for k, d in enumerate(cfg.delays):
        if k <= cfg.dep_q:
            codes[:, k, : frames - d] = generated[:, k, d:]
        else:
            codes[:, k, : frames - 1] = user[:, k - 1 - cfg.dep_q, 1:]
    return codes


@torch.no_grad()
def kyutai_logits(kyutai_lm, codes: np.ndarray) -> dict[str, np.ndarray]:
    """kyutai LMModel.forward of codes (B, 1 + n_q, T): text_logits (B, 1, T, V) and audio_logits (B, dep_q, T, card),
    aligned with the frames of the codes (NaN in the delay tail)."""
    out = kyutai_lm(torch.from_numpy(codes).to(device_of(kyutai_lm)))
    return {"text_logits": to_numpy(out.text_logits.float()), "audio_logits": to_numpy(out.logits.float())}


def aligned_logits(
    cfg: LMConfig, full: dict[str, np.ndarray], run: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """component -> (full-forward logits, step logits) over the same frames: a full forward's text_logits (B, 1, T, V)
    and audio_logits (B, dep_q, T, card) (frame-aligned, as `kyutai_logits` and our LMs return them) against a
    `run_steps` run's, whose codebook c at frame t was sampled at step t + delay: (B, T, V) text and (B, sum of the
    codebooks' T - delay, card) audio, the delay tail left out."""
    frames = run["text_logits"].shape[-1]
    delays = cfg.delays[1 : 1 + cfg.dep_q]
    audio_step = np.moveaxis(run["audio_logits"], -1, 2)
    return {
        "text_logits": (full["text_logits"][:, 0], np.moveaxis(run["text_logits"], -1, 1)),
        "audio_logits": (
            np.concatenate([full["audio_logits"][:, c, : frames - d] for c, d in enumerate(delays)], 1),
            np.concatenate([audio_step[:, c, d:] for c, d in enumerate(delays)], 1),
        ),
    }


def stream_name(k: int, dep_q: int) -> str:
    """Stream k of the layout (text, then Moshi's dep_q audio codebooks, then the user's)."""
    if k == 0:
        return "text"
    return f"audio codebook {k - 1}" if k <= dep_q else f"user audio codebook {k - 1 - dep_q}"


def _run_length(row: np.ndarray, value: object, *, end: bool) -> int:
    """How many positions at the start (or end) of a 1-D row hold `value`."""
    other = np.flatnonzero(row != value)
    if len(other) == 0:
        return len(row)
    return len(row) - 1 - int(other[-1]) if end else int(other[0])


def first_difference(
    expected: np.ndarray,
    got: np.ndarray,
    *,
    what: str,
    names: tuple[str, str],
    delays: tuple[int, ...],
    dep_q: int,
    first_stream: int = 0,
    head: tuple[str, object] | None = None,
    tail: tuple[str, object] | None = None,
) -> str | None:
    """None when two (B, K, T) arrays are equal (NaN equal to NaN); else a message naming the first stream that
    differs, its delay, how many of its positions differ, the first (row, t) and both values there.

    Args:
        what: what the arrays are ("delayed codes", "audio_mask", "NaN placement of text_logits", ...).
        names: (expected's implementation, got's implementation).
        delays: the delays of the whole layout (1 + n_q streams).
        first_stream: the layout index of row 0 of axis 1 (1 for audio logits and masks: codebook c is stream 1 + c).
        head, tail: (label, value) whose run at the start (end) of the differing row is counted on both sides, the
            delay each side applied ("initial token" for delayed codes, "NaN" for logits, "invalid" for masks); the
            value may be a sequence indexed by layout stream.
    """
    differ = expected != got
    if expected.dtype.kind == "f":
        differ &= ~(np.isnan(expected) & np.isnan(got))
    if not differ.any():
        return None
    k, b, t = (int(i) for i in np.argwhere(differ.transpose(1, 0, 2))[0])
    stream = first_stream + k
    message = (
        f"{what} differ: {stream_name(stream, dep_q)} (stream {stream}, delay {delays[stream]}): "
        f"{int(differ[:, k].sum())} of {differ[:, k].size} positions differ, first at row {b}, t {t}: "
        f"{names[0]} {expected[b, k, t]}, {names[1]} {got[b, k, t]}"
    )
    for side, run in (("begins with", head), ("ends in", tail)):
        if run is not None:
            label, value = run
            value = value[stream] if isinstance(value, tuple | list | np.ndarray) else value
            n = [_run_length(x[b, k], value, end=side == "ends in") for x in (expected, got)]
            message += f"; row {b} {side} {n[0]} x {label} in {names[0]}, {n[1]} in {names[1]}"
    return message


def nan_rows(logits: np.ndarray) -> np.ndarray:
    """(B, K, T, C) logits -> (B, K, T) labels "NaN" (the whole row), "finite" or "partly NaN"."""
    nan = np.isnan(logits)
    return np.where(nan.all(-1), "NaN", np.where(nan.any(-1), "partly NaN", "finite"))


def first_token_mismatch(cfg: LMConfig, expected: np.ndarray, got: np.ndarray) -> tuple[int, int, int] | None:
    """The first differing (row b, stream k, column t) of (B, 1 + dep_q, T) LMGen-layout tokens in generation order:
    by the step the token was sampled at (t - max_delay + delays[k]), then by stream (text, then the codebooks in the
    order the depth transformer samples them), so that a token that merely follows an earlier wrong one is not named."""
    b, k, t = np.nonzero(expected != got)
    if len(b) == 0:
        return None
    sampled = t - cfg.max_delay + np.asarray(cfg.delays)[k]
    i = np.lexsort((b, k, sampled))[0]
    return int(b[i]), int(k[i]), int(t[i])


def _top2(row: np.ndarray) -> str:
    top = np.argsort(-row, kind="stable")[:2]
    return ", ".join(f"{i} ({row[i]:.4g})" for i in top)


def token_mismatch(
    cfg: LMConfig,
    expected: np.ndarray,
    got: np.ndarray,
    *,
    names: tuple[str, str],
    logits: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
    compute_dtype: str | None = None,
    preset: str = "tiny",
) -> tuple[str, bool | None]:
    """(a message naming the first wrong token (`first_token_mismatch`): its stream, column, frame and sampling step,
    both tokens; whether its logits are within the policy: None when no token differs, the first differs before the
    first frame, or no logits were given).

    logits: (the candidate's step run (`run_steps`), the reference's full-forward logits (`kyutai_logits`) of the codes
    the candidate's stream consumed): when given, the logits the wrong token was sampled from are compared with the
    reference's at the same frame (the history before it is the same in both: no earlier token differs), with the top
    two of each, which tells a near tie or a bookkeeping bug from a wrong model. compute_dtype: the models' dtype when
    it is not the logits' (bf16 models return float32 logits), for the policy's bound; preset: the size whose policy
    rows bound it (`policy.sized`).
    """
    place = first_token_mismatch(cfg, expected, got)
    if place is None:
        return "no token differs", None
    b, k, t = place
    frame, delay = t - cfg.max_delay, cfg.delays[k]
    stream = f"{stream_name(k, cfg.dep_q)} (stream {k}, delay {delay})"
    tokens = f"{names[0]} {expected[b, k, t]}, {names[1]} {got[b, k, t]}"
    if frame < 0:
        return f"first differing token: row {b}, {stream}, column {t}, before the first frame: {tokens}", None
    step = frame + delay
    message = f"first differing token: row {b}, {stream}, column {t} = frame {frame}, sampled at step {step}: {tokens}"
    if logits is None:
        return message, None
    run, reference = logits
    if k == 0:
        component, cand, ref = "text_logits", run["text_logits"][b, :, step], reference["text_logits"][b, 0, frame]
    else:
        component, cand = "audio_logits", run["audio_logits"][b, k - 1, :, step]
        ref = reference["audio_logits"][b, k - 1, frame]
    key = sized(component, preset)
    ok, metrics, failures = judge(ref, cand, component=key, pair=names, expected_dtype=dtype_name(cand), logits=True,
                                  compute_dtype=compute_dtype)  # fmt: skip
    verdict = f"pass (max_abs {metrics.max_abs:.2e})" if ok and metrics else "FAIL: " + "; ".join(failures)
    return (
        f"{message}. Logits at step {step}, {names[1]}'s step vs {names[0]}'s forward of the codes {names[1]} "
        f"consumed: {verdict}; top 2 of {names[0]}: {_top2(ref)}, of {names[1]}: {_top2(cand)}"
    ), ok


__all__ = [
    "consumed_codes",
    "first_difference",
    "first_token_mismatch",
    "kyutai_logits",
    "nan_rows",
    "run_lmgen",
    "run_steps",
    "stream_name",
    "token_mismatch",
    "user_codes",
]
