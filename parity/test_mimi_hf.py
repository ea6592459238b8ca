"""HF transformers' Mimi (parity/harness/mimi_hf.py) against kyutai's and our Flax port: encode (every stage, the
latent, the codes with tie analysis) on noise, sines, silence and speech, decode (every stage, the audio), the same in
bf16 against ours, HF's own streaming against its full pass, what HF cannot build, HF as the weight source, and
negative controls in both dtypes.

The weights are parity/test_mimi.py's (kyutai draws them with the same seed; checked bit for bit), converted
kyutai -> hf by converters/mimi_hf.py; kyutai's and flax's outputs are test_mimi's own (its `encoded` and `models`).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from converters import convert, transforms
from parity import test_mimi
from parity.harness import mimi, mimi_hf, strategies
from parity.harness.codes import assert_codes
from parity.harness.compare import ParityError, assert_parity
from parity.harness.converter_cases import assert_bit_equal
from parity.harness.implementations import build
from parity.test_mimi import FRAMES, TINY, compare_stages

PAIRS = (("kyutai", "hf"), ("hf", "flax"))
HF_DECODE_STREAM = (
    "transformers' Mimi streams only its decoder transformer (decoder_cache): its decoder's convolutions and "
    "transposed convolutions keep no state between calls (MimiDecoder takes no padding cache), so every chunk "
    "restarts from zero padding and drops the previous chunk's overlap: measured on the tiny preset, 8 frames of "
    "noise, chunks of 1 frame: audio max|d| 2.3, rms of the difference 0.91 of the signal's (0.79), from sample 16, "
    "the first chunk boundary (chunks of 2 and 3 frames: from samples 32 and 48; speech alike; one chunk is exact)"
)


@functools.cache
def models(dtype: str = "float32"):
    """kyutai and hf with test_mimi's weights (kyutai draws them from the same seed)."""
    return build("mimi", TINY, dtype, impls=("kyutai", "hf"))


@functools.cache
def encoded(impl: str, signal: str, dtype: str = "float32") -> dict[str, np.ndarray]:
    """An encode of test_mimi's clip (every stage): test_mimi's own for its implementations, this module's HF."""
    if impl != "hf":
        return test_mimi.encoded(impl, signal) if dtype == "float32" else test_mimi._bf16_encoded(impl, signal)
    audio = strategies.audio(signal, TINY, frames=FRAMES, batch=2)
    return run("hf", {"audio": audio, "num_codebooks": TINY.num_codebooks}, dtype=dtype, capture=("stages",))


def run(impl: str, inputs: dict, *, dtype: str = "float32", **kwargs) -> dict[str, np.ndarray]:
    return (models(dtype) if impl == "hf" else test_mimi.models(TINY, dtype)).run(impl, inputs, **kwargs)


def quantizers() -> list:
    return mimi.quantizer_tables(test_mimi.models().states["ref"], TINY)


@pytest.mark.parametrize("dtype", ("float32", "bfloat16"))
def test_weights_are_test_mimis(dtype):
    """The comparisons below mix this module's hf with test_mimi's kyutai and flax: one set of weights."""
    assert_bit_equal(models(dtype).states["kyutai"], test_mimi.models(TINY, dtype).states["kyutai"])
    want = convert(models(dtype).states["kyutai"], src="kyutai", dst="hf", cfg=TINY, component="mimi")
    assert_bit_equal(models(dtype).states["hf"], want)


@pytest.mark.parametrize("signal", strategies.SIGNALS)
@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
def test_encode(pair, signal):
    ref, cand = encoded(pair[0], signal), encoded(pair[1], signal)
    compare_stages(ref, cand, TINY.stage_names()[0], pair)
    assert_codes(ref["codes"], cand["codes"], pair=pair, dtype="float32", ref_latent=ref["latent"],
                 cand_latent=cand["latent"], quantizers=quantizers())  # fmt: skip


@pytest.mark.parametrize("signal", ("speech", "random_codes"))
@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
def test_decode(pair, signal):
    if signal == "random_codes":
        codes = np.random.default_rng(3).integers(0, TINY.bins, (2, TINY.num_codebooks, FRAMES))
    else:
        codes = encoded("kyutai", signal)["codes"]
    ref, cand = (run(impl, {"codes": codes}, entry="decode", capture=("stages",)) for impl in pair)
    compare_stages(ref, cand, TINY.stage_names()[1], pair)
    assert_parity(ref["audio"], cand["audio"], component="mimi_audio", pair=pair, expected_dtype="float32")


# ----------------------------------------------------------------------------------------------------------------------
# HF's streaming against its full pass


@functools.cache
def hf_full() -> dict[str, np.ndarray]:
    audio = strategies.audio("noise", TINY, frames=FRAMES, batch=2)
    codes = models().run("hf", {"audio": audio, "num_codebooks": TINY.num_codebooks})["codes"]
    return {"audio": audio, "codes": codes, "decoded": models().run("hf", {"codes": codes}, entry="decode")["audio"]}


@pytest.mark.parametrize("chunk", (1, 2, 3))
def test_hf_encode_stream_equals_full(chunk):
    """HF's streaming encode (`padding_cache` + the sliding-window KV cache) gives its full pass's codes past the
    context (16 steps through a window of 6) for every chunking (kyutai's does not: parity/test_mimi_streaming.py)."""
    full = hf_full()
    inputs = {"audio": full["audio"], "num_codebooks": TINY.num_codebooks, "chunk_frames": chunk}
    codes = models().run("hf", inputs, entry="encode_stream")["codes"]
    assert_parity(full["codes"], codes, component="mimi_stream_codes", pair=("hf[full]", "hf[stream]"),
                  expected_dtype="int64")  # fmt: skip


def stream_decode(chunk: int, *, expected_divergence: str | None = None) -> None:
    full = hf_full()
    audio = models().run("hf", {"codes": full["codes"], "chunk_frames": chunk}, entry="decode_stream")["audio"]
    assert_parity(full["decoded"], audio, component="mimi_stream_audio", pair=("hf[full]", "hf[stream]"),
                  expected_dtype="float32", expected_divergence=expected_divergence)  # fmt: skip


def test_hf_decode_stream_in_one_chunk_equals_full():
    """The decode_stream entry itself is HF's decode: one chunk of the whole clip is its full pass."""
    stream_decode(FRAMES)


@pytest.mark.xfail(strict=True, raises=ParityError, reason=HF_DECODE_STREAM)
def test_hf_decode_stream():
    stream_decode(1, expected_divergence=HF_DECODE_STREAM)


# ----------------------------------------------------------------------------------------------------------------------
# What HF cannot build; HF as the weight source


REFUSED = {
    "bins_12": ({"bins": 12}, "power of 2"),
    "codebook_dim_eq_dim": ({"codebook_dim": 16}, "drop their projections"),
    "codebook_eps": ({"codebook_eps": 1e-6}, "clamp the cluster usage at 1e-05"),
    "no_context": ({"transformer": TINY.transformer.replace(context=None)}, "sliding window"),
    "three_channels": ({"seanet": TINY.seanet.replace(channels=3)}, "1 or 2 audio channels"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_hf_refuses_what_it_cannot_build(name):
    change, reason = REFUSED[name]
    cfg = TINY.replace(**change)
    assert reason in (mimi_hf.hf_support(cfg) or "")
    with pytest.raises(ValueError, match=f"hf cannot: .*{reason}"):
        build("mimi", cfg, "float32", impls=("hf", "ref"))


def test_hf_draws_the_weights_kyutai_cannot_build():
    """Grouped kv heads (one kv head): kyutai refuses, so HF draws the weights (mimi_hf.randomize_hf, calibrated
    codebooks) and ref reads them through hf -> kyutai -> ref."""
    cfg = TINY.replace(transformer=TINY.transformer.replace(num_kv_heads_override=1))
    models = build("mimi", cfg, "float32", impls=("hf", "ref"))
    assert models.source == "hf"
    audio = strategies.audio("noise", cfg, frames=FRAMES, batch=2)
    inputs = {"audio": audio, "num_codebooks": cfg.num_codebooks}
    ref, cand = (models.run(impl, inputs, capture=("stages",)) for impl in ("hf", "ref"))
    compare_stages(ref, cand, cfg.stage_names()[0], ("hf", "ref"))
    assert_codes(ref["codes"], cand["codes"], pair=("hf", "ref"), dtype="float32", ref_latent=ref["latent"],
                 cand_latent=cand["latent"], quantizers=mimi.quantizer_tables(models.states["ref"], cfg))  # fmt: skip
    assert all(len(np.unique(ref["codes"][:, k])) >= 3 for k in range(cfg.num_codebooks)), ref["codes"]


# ----------------------------------------------------------------------------------------------------------------------
# bf16: HF encodes in bf16 on CPU (kyutai cannot: test_mimi.test_kyutai_cannot_encode_bfloat16) and decodes


@pytest.mark.parametrize("impl", ("ref", "flax"))
def test_encode_bfloat16(impl):
    """hf -> ours in bf16, speech: every encode stage and the codes (ties explained by the bf16 latents)."""
    pair = ("hf", impl)
    ref, cand = (encoded(i, "speech", "bfloat16") for i in pair)
    compare_stages(ref, cand, TINY.stage_names()[0], pair, dtype="bfloat16")
    assert_codes(ref["codes"], cand["codes"], pair=pair, dtype="bfloat16", ref_latent=ref["latent"].astype(np.float32),
                 cand_latent=cand["latent"].astype(np.float32), quantizers=test_mimi.bf16_quantizers())  # fmt: skip


@pytest.mark.parametrize("pair", (("kyutai", "hf"), ("hf", "ref"), ("hf", "flax")), ids="->".join)
def test_decode_bfloat16(pair):
    """Every decode stage and the audio in bf16, of ref's bf16 codes of speech."""
    codes = {"codes": encoded("ref", "speech", "bfloat16")["codes"]}
    ref, cand = (run(impl, codes, dtype="bfloat16", entry="decode", capture=("stages",)) for impl in pair)
    compare_stages(ref, cand, (*TINY.stage_names()[1], "audio"), pair, dtype="bfloat16")


# ----------------------------------------------------------------------------------------------------------------------
# Negative controls


@pytest.mark.parametrize("dtype", ("float32", "bfloat16"))
def test_negative_control_rope_not_permuted(monkeypatch, dtype):
    """HF loaded with kyutai's q/k rows unpermuted (interleaved pairs read as rotate_half's): SEANet still agrees,
    the encoder transformer's first layer leaves kyutai's (in bf16 ref's, kyutai cannot encode there: bf16's wider
    bound still lets no unpermuted rope through)."""
    monkeypatch.setitem(transforms.TRANSFORMS, "unfuse_qkv", transforms.TRANSFORMS["split_qkv"])
    bad = build("mimi", TINY, dtype, impls=("kyutai", "hf"))
    audio = strategies.audio("speech", TINY, frames=FRAMES, batch=2)
    cand = bad.run("hf", {"audio": audio, "num_codebooks": TINY.num_codebooks}, capture=("stages",))
    names, pair = TINY.stage_names()[0], ("kyutai" if dtype == "float32" else "ref", "hf")
    first, ref = names.index("encoder_transformer.layers.0"), encoded(pair[0], "speech", dtype)
    compare_stages(ref, cand, names[:first], pair, dtype=dtype)
    control = "hf_rope_not_permuted" + ("" if dtype == "float32" else "_bf16")
    with pytest.raises(ParityError):
        compare_stages(ref, cand, names[first : first + 1], pair, dtype=dtype, control=control)
