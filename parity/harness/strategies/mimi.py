"""Mimi draws: the test audio (`SIGNALS`, `audio`) and small Mimi configs over every option that changes the
computation."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from moshi_spec import MimiConfig, TransformerConfig

SIGNALS = ("noise", "sines", "silence", "speech")
"""Mimi's test audio: white noise, a chord of three sines with a slow amplitude swing, silence, and real speech
(espeak-ng, parity/harness/speech.py, resampled to the config's rate; skipped where the library cannot load)."""
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog, while Moshi listens and speaks."


def audio(signal: str, cfg: MimiConfig, *, frames: int, batch: int, seed: int = 0) -> np.ndarray:
    """(batch, channels, frames * frame_size) float32 audio of one of SIGNALS, rms ~0.1-0.3; speech rows start at
    different offsets of the utterance."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; known: {SIGNALS}")
    length, rate = frames * cfg.frame_size, cfg.sample_rate
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.seanet.channels, length)
    if signal == "noise":
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    if signal == "silence":
        return np.zeros(shape, np.float32)
    if signal == "sines":
        t = np.arange(length) / rate
        nyquist = rate / 2
        tones = sum(np.sin(2 * np.pi * (f * nyquist) * t + p) for f, p in ((0.05, 0.0), (0.13, 1.0), (0.31, 2.0)))
        swing = 0.6 + 0.4 * np.sin(2 * np.pi * t * rate / length)
        return np.broadcast_to((0.1 * tones * swing).astype(np.float32), shape).copy()
    from parity.harness import speech

    reason = speech.available()
    if reason is not None:
        import pytest

        pytest.skip(f"no speech synthesiser: {reason}")
    voice = speech.synthesize(SPEECH_TEXT, sample_rate=rate)
    need = length + (batch - 1) * cfg.frame_size
    voice = np.resize(voice, need) if voice.shape[0] < need else voice
    rows = [voice[b * cfg.frame_size : b * cfg.frame_size + length] for b in range(batch)]
    return np.broadcast_to(np.stack(rows)[:, None], shape).astype(np.float32).copy()


@st.composite
def mimi_configs(draw: st.DrawFn) -> MimiConfig:
    """Small Mimi configs over every option that changes the computation: padding mode, strides (2 or 3 stages),
    residual blocks and dilations, kernel sizes, branch compression, transformer heads, layers and context (down to
    2 steps, shorter than a frame's 2 steps times the clip), codebook counts, sizes and active codebooks. Two encoder
    steps per frame (resample stride 2), at 100 frames/s."""
    from moshi_spec import SEANetConfig

    ratios = draw(st.sampled_from(((4, 2), (2, 3), (2, 2, 2))))
    hop = int(np.prod(ratios))
    n_q = draw(st.integers(2, 5))
    seanet = SEANetConfig(
        dimension=16,
        n_filters=4,
        ratios=ratios,
        n_residual_layers=draw(st.integers(1, 2)),
        dilation_base=draw(st.sampled_from((1, 2))),
        kernel_size=draw(st.sampled_from((3, 7))),
        residual_kernel_size=draw(st.sampled_from((3, 5))),
        last_kernel_size=draw(st.sampled_from((1, 3))),
        compress=draw(st.sampled_from((2, 4))),
        pad_mode=draw(st.sampled_from(("constant", "replicate"))),
    )
    transformer = TransformerConfig(
        dim=16, num_heads=draw(st.sampled_from((2, 4))), num_layers=draw(st.integers(1, 2)),
        ffn_dim=draw(st.sampled_from((16, 32))), activation="gelu", norm_eps=1e-5, rope_layout="interleaved",
        context=draw(st.sampled_from((2, 5, 12))),
    )  # fmt: skip
    return MimiConfig(
        sample_rate=200 * hop, frame_rate=100.0, seanet=seanet, transformer=transformer, codebook_dim=8,
        bins=draw(st.sampled_from((8, 32))), n_q=n_q, num_codebooks=draw(st.integers(1, n_q)),
    )  # fmt: skip
