"""espeak-ng speech for the Mimi tests (parity/harness/speech.py): deterministic, exact lengths, and speech, which
silence and white noise of the same rms are not."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from parity.harness import speech

pytestmark = pytest.mark.skipif(speech.available() is not None, reason=f"espeak-ng: {speech.available()}")

TEXT = "The quick brown fox jumps over the lazy dog."
RATE = 24000


def not_speech(x: np.ndarray, rate: int) -> list[str]:
    """Why x is not speech-like ([] when it is): speech has energy, a low spectral centroid and zero-crossing rate
    (voiced sound), and a loudness that comes and goes (syllables, pauses); white noise has none of the last three."""
    frames = x[: len(x) // (rate // 50) * (rate // 50)].reshape(-1, rate // 50).astype(np.float64)  # 20 ms
    loudness = np.sqrt((frames**2).mean(axis=1))
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    centroid = (np.fft.rfftfreq(len(x), 1 / rate) * power).sum() / max(power.sum(), 1e-30)
    stats = {
        "rms": float(np.sqrt(np.mean(x.astype(np.float64) ** 2))),
        "centroid_hz": float(centroid),
        "zcr": float(np.mean(np.signbit(x[1:]) != np.signbit(x[:-1]))),
        "loudness_cv": float(loudness.std() / max(loudness.mean(), 1e-30)),
    }
    bounds = {"rms": (0.02, 0.5), "centroid_hz": (150, 2500), "zcr": (0.01, 0.2), "loudness_cv": (0.5, 5)}
    return [f"{k}={stats[k]:.3g} outside {lo}..{hi}" for k, (lo, hi) in bounds.items() if not lo <= stats[k] <= hi]


def test_deterministic():
    """Same text, same samples: across calls, whatever came between (espeak's own state), and in a fresh process."""
    x = speech.synthesize(TEXT, sample_rate=RATE)
    assert x.dtype == np.float32 and x.ndim == 1 and np.abs(x).max() <= 1.0
    assert np.array_equal(x, speech.synthesize(TEXT, sample_rate=RATE))
    first, native_rate = speech._native(TEXT)  # uncached
    speech._native("Something else, to move espeak's state along.")
    assert native_rate == 22050 and np.array_equal(first, speech._native(TEXT)[0])
    code = (
        "import hashlib; from parity.harness import speech; "
        f"print(hashlib.sha256(speech.synthesize({TEXT!r}, sample_rate={RATE}).tobytes()).hexdigest())"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert fresh == hashlib.sha256(x.tobytes()).hexdigest()


def test_seconds_pads_and_truncates():
    full = speech.synthesize(TEXT, sample_rate=RATE)
    short = speech.synthesize(TEXT, sample_rate=RATE, seconds=1.0)
    long = speech.synthesize(TEXT, sample_rate=RATE, seconds=4.0)
    assert short.shape == (RATE,) and long.shape == (4 * RATE,)
    np.testing.assert_array_equal(short, full[:RATE])
    np.testing.assert_array_equal(long[: len(full)], full)
    assert not long[len(full) :].any()
    assert speech.synthesize(TEXT, sample_rate=16000, seconds=0.5).shape == (8000,)


def test_speech_like_and_controls():
    """The check passes espeak's speech and fails silence and white noise of the same rms (negative controls)."""
    x = speech.synthesize(TEXT, sample_rate=RATE)
    assert 2.0 <= len(x) / RATE <= 3.5
    assert not_speech(x, RATE) == []
    noise = np.random.default_rng(0).standard_normal(len(x)) * np.sqrt(np.mean(x.astype(np.float64) ** 2))
    assert len(not_speech(noise.astype(np.float32), RATE)) >= 3  # centroid, zero crossings, flat loudness
    assert not_speech(np.zeros_like(x), RATE)


@pytest.mark.parametrize(("rate_in", "rate_out", "freq"), [(22050, 24000, 4000), (24000, 16000, 3000)])
def test_resample_sine(rate_in, rate_out, freq):
    """A tone in the passband comes out the same tone at the new rate; one above the new Nyquist is removed."""
    t = np.arange(rate_in) / rate_in
    out = speech.resample(np.sin(2 * np.pi * freq * t), rate_in, rate_out)
    assert len(out) == rate_out
    inner = slice(500, -500)  # away from the zero-padded edges
    np.testing.assert_allclose(out[inner], np.sin(2 * np.pi * freq * np.arange(rate_out) / rate_out)[inner], atol=1e-4)
    if rate_out < rate_in:
        alias = speech.resample(np.sin(2 * np.pi * 0.45 * rate_in * t), rate_in, rate_out)
        assert np.abs(alias[inner]).max() < 1e-3
