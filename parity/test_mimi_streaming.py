"""Mimi streaming: frame by frame (and in chunks of 2-3 frames) against the full pass, both directions, for our ports
and kyutai's streaming mode.

Our streaming keeps every key a query's window needs (a ring of context + chunk steps - 1), so it equals the full pass
for any chunking. kyutai's streaming attention keeps a ring of exactly `context` slots: a chunk of T > 1 steps
overwrites keys the chunk's first queries still see, so past `context` steps its streaming output leaves its own full
pass (at Mimi's size, 2 steps a frame and a context of 250: from frame 125, i.e. after 10 s). Within the context
kyutai's streaming equals ours; beyond it the difference is a strict expected divergence, with its measured size.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from moshi_spec import MimiConfig
from parity.harness import mimi, strategies  # noqa: F401  (mimi binds the component to every implementation)
from parity.harness.adapters import Impl
from parity.harness.compare import ParityError, assert_parity
from parity.harness.implementations import build

TINY = MimiConfig.tiny()  # context 6 steps = 3 frames
WIDE = TINY.replace(transformer=TINY.transformer.replace(context=40))  # every step inside the context
FLAX = "flax[jit]"  # the full pass compiled once (streaming steps are compiled by the binding either way)
FRAMES = 6  # 12 steps through a window of 6; chunks of 1, 2 and 3 frames divide it (one compile each)
KYUTAI_RING = (
    "kyutai's streaming attention keeps `context` ring slots, so a chunk of 2 steps per frame overwrites a key its "
    "first query still needs once the stream passes the context: measured on the tiny preset (context 6 steps), "
    "8 frames of noise, chunks of 1 frame: codes 71% equal from frame 3, audio max|d| 0.26 (rms 0.78) from sample 48 "
    "(the test runs 6 frames)"
)


@functools.cache
def models(cfg: MimiConfig):
    return build("mimi", cfg, "float32", impls=("kyutai", "ref", FLAX) if cfg is TINY else ("kyutai", FLAX))


@functools.cache
def full(cfg: MimiConfig, impl: str) -> dict[str, np.ndarray]:
    audio = strategies.audio("noise", cfg, frames=FRAMES, batch=2)
    codes = models(cfg).run(impl, {"audio": audio, "num_codebooks": cfg.num_codebooks})["codes"]
    return {"audio": audio, "codes": codes, "decoded": models(cfg).run(impl, {"codes": codes}, entry="decode")["audio"]}


def streamed(cfg: MimiConfig, impl: str, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, audio) of the streaming API fed `chunk` frames at a time, from the full pass's audio and codes."""
    ref = full(cfg, impl)
    codes = models(cfg).run(
        impl, {"audio": ref["audio"], "num_codebooks": cfg.num_codebooks, "chunk_frames": chunk}, entry="encode_stream"
    )["codes"]
    audio = models(cfg).run(impl, {"codes": ref["codes"], "chunk_frames": chunk}, entry="decode_stream")["audio"]
    return codes, audio


def assert_stream(cfg: MimiConfig, impl: str, reference: str, chunk: int, *, expected_divergence: str | None = None):
    codes, audio = streamed(cfg, impl, chunk)
    ref = full(cfg, reference)
    pair = (str(Impl.parse(reference).variant("full")), str(Impl.parse(impl).variant("stream")))
    assert_parity(ref["codes"], codes, component="mimi_stream_codes", pair=pair, expected_dtype="int64",
                  expected_divergence=expected_divergence)  # fmt: skip
    assert_parity(ref["decoded"], audio, component="mimi_stream_audio", pair=pair, expected_dtype="float32",
                  expected_divergence=expected_divergence)  # fmt: skip


@pytest.mark.parametrize("chunk", (1, 2, 3))
@pytest.mark.parametrize("impl", ("ref", FLAX))
def test_stream_equals_full(impl, chunk):
    """Past the context (12 steps through a window of 6): every chunking gives the full pass's codes and audio."""
    assert_stream(TINY, impl, impl, chunk)


@pytest.mark.parametrize("chunk", (1, 3))
def test_kyutai_stream_within_context(chunk):
    """Inside the context kyutai's streaming equals its full pass and ours (the first frame's replicate padding of
    the downsample included)."""
    assert_stream(WIDE, "kyutai", "kyutai", chunk)
    assert_stream(WIDE, FLAX, "kyutai", chunk)


@pytest.mark.xfail(strict=True, raises=ParityError, reason=KYUTAI_RING)
def test_kyutai_stream_past_context():
    assert_stream(TINY, "kyutai", "kyutai", 1, expected_divergence=KYUTAI_RING)


def test_reset_restarts_rows():
    """Resetting row 0 mid-stream makes it encode audio as a fresh stream would; row 1 goes on untouched."""
    import jax.numpy as jnp
    from flax import nnx

    cfg = TINY
    ref = full(cfg, FLAX)
    module = models(cfg).module(FLAX)
    step = nnx.jit(lambda m, audio, state: m.encode_step(audio, state))
    audio, n = jnp.asarray(ref["audio"]), 3 * cfg.frame_size
    first, state = step(module, audio[..., :n], module.init_state(2))
    state = module.reset(state, jnp.asarray([True, False]))
    # row 0 starts again from frame 0, row 1 goes on with frames 3-5
    again, _ = step(module, jnp.stack([audio[0, :, :n], audio[1, :, n : 2 * n]]), state)
    np.testing.assert_array_equal(np.asarray(again)[0], np.asarray(first)[0])
    np.testing.assert_array_equal(np.asarray(again)[1], ref["codes"][1, :, 3:6])


STREAM_CONTROLS = {  # name: (class in models_ref.mimi.conv, the output it must move)
    # each chunk padded afresh, as a batch call would: the carried left context dropped
    "conv_carry_dropped": ("CausalConv1d", "codes"),
    # the transposed convolution's overlap tail not added to the next chunk
    "convtr_overlap_dropped": ("CausalConvTranspose1d", "audio"),
}


@pytest.mark.parametrize("name", sorted(STREAM_CONTROLS))
def test_stream_negative_control(name, monkeypatch):
    """A streaming bug (a carry dropped between chunks) makes frame-by-frame streaming leave the full pass
    (models_ref: eager, so the patch reaches the steps)."""
    from models_ref.mimi import conv

    cls_name, output = STREAM_CONTROLS[name]
    cls = getattr(conv, cls_name)
    step = cls.step
    monkeypatch.setattr(cls, "step", lambda self, x, state: step(self, x, self.init_state(x.shape[0])))
    codes, audio = streamed(TINY, "ref", 1)
    ref = full(TINY, "ref")
    pair = ("ref[full]", "ref[stream]")
    with pytest.raises(ParityError):
        if output == "codes":
            assert_parity(ref["codes"], codes, component="mimi_stream_codes", pair=pair, expected_dtype="int64",
                          control=name)  # fmt: skip
        else:
            assert_parity(ref["decoded"], audio, component="mimi_stream_audio", pair=pair, expected_dtype="float32",
                          control=name)  # fmt: skip
