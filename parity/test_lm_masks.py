"""The delay pattern and its masks, against kyutai's own: where kyutai's LMModel shifts a stream, fills it with its
initial token, marks a position invalid and returns NaN, ref and flax must do the same, exactly.

(a) the delay and undelay functions of models_ref and models_flax against kyutai's `_delay_sequence` and
    `_undelay_sequence` (what LMModel.forward calls), for the tiny preset's delays and a spread pattern (delays up to 4,
    a delayed text stream), several seeds of codes without zero tokens;
(b) the whole LM (the cached tiny models of parity/test_lm.py) on codes without zero tokens, several seeds: masks and
    NaN placement equal kyutai's, values equal where kyutai's are finite.
Negative controls plant delay bugs (a zero instead of NaN, a mask one step too far, an initial token for one step
only, a stream given its neighbour's delay, NaN or garbage at zero-token positions); each failure names the stream,
its delay and the first position.
"""

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from moshi.models.lm_utils import _delay_sequence, _undelay_sequence

import models_flax.delays
import models_flax.lm
import models_ref.delays
from parity.harness.arrays import to_numpy
from parity.harness.strategies import random_codes
from parity.harness.streaming_runs import first_difference, nan_rows
from parity.test_lm import CFG, _compare_logits, _runs

PATTERNS = {"tiny": CFG.delays, "spread": (3, 0, 2, 1, 4, 0, 1, 2, 1)}
SEEDS = (0, 1, 2)
LENGTH = 12
INITIAL = np.asarray([CFG.initial_text_token] + [CFG.initial_audio_token] * CFG.n_q)  # kyutai _get_initial_token


def _kyutai(delays: tuple[int, ...], codes: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, ...]:
    initial = torch.from_numpy(INITIAL).view(1, -1, 1).expand(codes.shape[0], -1, -1)
    out, mask = _undelay_sequence(list(delays), torch.from_numpy(logits), fill_value=float("nan"))
    return to_numpy(_delay_sequence(list(delays), torch.from_numpy(codes), initial)), to_numpy(out), to_numpy(mask)


def _ours(impl: str, delays: tuple[int, ...], codes: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, ...]:
    if impl == "ref":
        delayed = models_ref.delays.delay(torch.from_numpy(codes), delays, torch.from_numpy(INITIAL))
        return to_numpy(delayed), *map(to_numpy, models_ref.delays.undelay(torch.from_numpy(logits), delays))
    delayed = models_flax.delays.delay(jnp.asarray(codes), delays, jnp.asarray(INITIAL))
    return to_numpy(delayed), *map(to_numpy, models_flax.delays.undelay(jnp.asarray(logits), delays))


def _inputs(seed: int, streams: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes (2, K, T) without zero tokens (the initial tokens are out of their range), and logits (2, K, T, 4) whose
    channel 0 is the time step of the row: after undelay it reads the step each position was taken from."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, CFG.card, (2, streams, LENGTH)).astype(np.int64)
    logits = rng.standard_normal((2, streams, LENGTH, 4)).astype(np.float32)
    logits[..., 0] = np.arange(LENGTH)
    return codes, logits


def _delay_problems(impl: str, delays: tuple[int, ...], seed: int) -> list[str]:
    """Every difference between kyutai's delay/undelay and `impl`'s, each naming its stream and delay."""
    codes, logits = _inputs(seed, len(delays))
    expected, got = _kyutai(delays, codes, logits), _ours(impl, delays, codes, logits)
    where = {"names": ("kyutai", impl), "delays": delays, "dep_q": CFG.dep_q}
    problems = [
        first_difference(expected[0], got[0], what="delayed codes", head=("initial token", INITIAL), **where),
        first_difference(expected[2], got[2], what="undelay masks", tail=("invalid", False), **where),
        first_difference(nan_rows(expected[1]), nan_rows(got[1]), what="NaN placement", tail=("NaN", "NaN"), **where),
        first_difference(expected[1][..., 0], got[1][..., 0], what="undelayed logits (the step read)", **where),
    ]
    if not any(problems) and not np.array_equal(expected[1], got[1], equal_nan=True):
        problems.append("undelayed logits differ in value (not in the step read)")
    return [f"{impl}, delays {delays}, seed {seed}: {p}" for p in problems if p]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("impl", ("ref", "flax"))
def test_delay_pattern_matches_kyutai(impl, pattern):
    problems = [p for seed in SEEDS for p in _delay_problems(impl, PATTERNS[pattern], seed)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seed", SEEDS)
def test_lm_masks_and_nan_placement_match_kyutai(seed):
    """The whole LM on codes without zero tokens: the masks are the delay pattern alone, NaN fills exactly the delay
    tail, and both equal kyutai's; the values agree where kyutai's are finite."""
    models, _, _ = _runs("float32")
    codes = random_codes(CFG, 2, 20, seed=10 + seed)
    runs = {impl: models.run(impl, {"codes": codes}) for impl in ("kyutai", "ref", "flax")}
    for impl in ("ref", "flax"):
        _compare_logits(runs["kyutai"], runs[impl], ("kyutai", impl), "float32")


# Negative controls ---------------------------------------------------------------------------------------------------


def _undelay_zero_filled(module):
    original = module.undelay

    def undelay(logits, delays):  # a port that pads the tail with zeros, not NaN
        out, mask = original(logits, delays)
        return (torch.nan_to_num(out, nan=0.0) if module is models_ref.delays else jnp.nan_to_num(out, nan=0.0)), mask

    return undelay


def _undelay_mask_one_too_far(module):
    original = module.undelay

    def undelay(logits, delays):  # the mask of a delayed stream valid one step into its tail
        out, mask = original(logits, delays)
        extra = np.zeros(mask.shape, bool)
        for k, d in enumerate(delays):
            if d:
                extra[:, k, -d] = True
        return out, (mask | torch.from_numpy(extra)) if module is models_ref.delays else (mask | extra)

    return undelay


def _delay_initial_once(module):
    def delay(codes, delays, initial):  # the initial token at the first step only, the stream still shifted
        out = codes.clone()
        for k, d in enumerate(delays):
            if d:
                out[:, k, d:] = codes[:, k, :-d]
                out[:, k, :1] = initial[k]
        return out

    return delay


def _delay_of_previous_stream(module):
    original = module.delay

    def delay(codes, delays, initial):  # enumerate misaligned: stream k shifted by delays[k - 1]
        return original(codes, (delays[0], *delays[:-1]), initial)

    return delay


# name -> (implementation, function replaced, its replacement, pattern, the message's start)
DELAY_CONTROLS = {
    "tail_zero_not_nan": ("flax", "undelay", _undelay_zero_filled, "tiny",
                          "NaN placement differ: audio codebook 1 (stream 2, delay 1): 2 of 24 positions differ, first "
                          "at row 0, t 11: kyutai NaN, flax finite; row 0 ends in 1 x NaN in kyutai, 0 in flax"),
    "mask_one_too_far": ("ref", "undelay", _undelay_mask_one_too_far, "tiny",
                         "undelay masks differ: audio codebook 1 (stream 2, delay 1): 2 of 24 positions differ, first "
                         "at row 0, t 11: kyutai False, ref True; row 0 ends in 1 x invalid in kyutai, 0 in ref"),
    "initial_token_once": ("ref", "delay", _delay_initial_once, "spread",
                           "delayed codes differ: text (stream 0, delay 3): 4 of 24 positions differ, first at row 0, "
                           "t 1: kyutai 48, ref "),
    "previous_stream_delay": ("flax", "delay", _delay_of_previous_stream, "tiny",
                              "delayed codes differ: audio codebook 1 (stream 2, delay 1): 24 of 24 positions differ, "
                              "first at row 0, t 0: kyutai 32, flax "),
}  # fmt: skip


@pytest.mark.parametrize("name", DELAY_CONTROLS)
def test_delay_control_fails(name, monkeypatch):
    """Each planted delay bug fails (a) and the first problem names the stream, its delay and both values. The
    functions run eagerly: a plain monkeypatch reaches them (no trace to drop)."""
    impl, function, replacement, pattern, message = DELAY_CONTROLS[name]
    module = models_ref.delays if impl == "ref" else models_flax.delays
    monkeypatch.setattr(module, function, replacement(module))
    problems = _delay_problems(impl, PATTERNS[pattern], SEEDS[0])
    assert problems and problems[0].split(": ", 1)[1].startswith(message), problems


def _edited(run: dict, component: str, edit) -> dict:
    return {**run, component: edit(run[component].copy(), run[component.replace("logits", "mask")])}


def _nan_at_zero_tokens(logits, mask):  # a port that fills every masked position with NaN, zero tokens included
    logits[~mask] = np.nan
    return logits


def _garbage_at_zero_tokens(logits, mask):  # finite but wrong where a zero token masks the position out
    logits[~mask & ~np.isnan(logits).any(-1)] = 0.0
    return logits


# name -> (what breaks the candidate: a patch of the flax LM's undelay or an edit of its cached outputs, the message)
LM_CONTROLS = {
    "lm_tail_zero_not_nan": (lambda mp: mp.setattr(models_flax.lm, "undelay", _undelay_zero_filled(models_flax.delays)),
                             None, "NaN placement of audio_logits differ: audio codebook 1 (stream 2, delay 1)"),
    "lm_mask_one_too_far": (lambda mp: mp.setattr(models_flax.lm, "undelay",
                                                  _undelay_mask_one_too_far(models_flax.delays)),
                            None, "audio_mask differ: audio codebook 1 (stream 2, delay 1)"),
    "nan_at_zero_tokens": (None, _nan_at_zero_tokens, "NaN placement of audio_logits differ: audio codebook 0 "
                                                      "(stream 1, delay 0)"),
    "garbage_at_zero_tokens": (None, _garbage_at_zero_tokens,
                               "worst row: row 1, audio codebook 2 (stream 3, delay 1), t 18"),
}  # fmt: skip


@pytest.mark.parametrize("name", LM_CONTROLS)
def test_lm_control_fails(name, monkeypatch):
    """The whole-LM comparison (the cached tiny models, codes with zero tokens) fails on each planted bug, naming the
    stream. Before NaN placement and the zero tokens' positions were compared, all four but the mask passed."""
    patch, edit, message = LM_CONTROLS[name]
    models, codes, runs = _runs("float32")
    if patch is not None:
        patch(monkeypatch)  # the Flax LM runs eagerly in the adapter: no trace to drop
        cand = models.run("flax", {"codes": codes})
    else:
        cand = _edited(runs["flax"], "audio_logits", edit)
    with pytest.raises(AssertionError, match=re.escape(message)):
        _compare_logits(runs["kyutai"], cand, ("kyutai", "flax"), "float32", components=("audio_logits",),
                        control=name)  # fmt: skip
