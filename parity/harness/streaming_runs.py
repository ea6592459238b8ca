"""Runs streaming generation in kyutai (`LMGen`) and in Flax (`Streamer`), and rebuilds the full-sequence codes a
stream consumed, so that a step-by-step run can be checked against the full forward (parity/test_streaming.py).

Frame bookkeeping (kyutai LMGen, mirrored by models_flax.streaming): the token stream k consumes at step t is its
initial token while t <= delays[k]; otherwise, for a model stream (text, Moshi's audio), the token generated at step
t - 1, and for a user stream the code given at step t - delays[k]. The full forward of codes (B, 1 + n_q, T) consumes
codes[k, t - 1 - delays[k]] at position t, hence codes[k, j] = generated[k][j + delays[k]] for the model streams and
codes[k, j] = user[k][j + 1] for the user's (the user's codes of step 0 are never read, in kyutai as here).
"""

from __future__ import annotations

import jax
import numpy as np
import torch

from models_flax.streaming import UNGENERATED, Streamer
from moshi_spec import LMConfig
from parity.harness.arrays import to_numpy


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
            out = gen.step(torch.from_numpy(codes[:, :, t : t + 1]))
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
    return {name: np.stack([to_numpy(getattr(o, name)) for o in outs], axis=-1) for name in vars(outs[0])}


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


__all__ = ["consumed_codes", "run_lmgen", "run_steps", "user_codes"]
