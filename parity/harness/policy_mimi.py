"""The Mimi rows of the tolerance table (parity/harness/policy.py, which imports this module to register them): the
codec's stages, audio and streaming codes, tiny and real size, fp32 and bf16."""

from __future__ import annotations

from parity.harness.policy import OURS, UPSTREAM, UPSTREAM_OURS, Tolerance, _set, sized

# Mimi (parity/test_mimi.py, parity/test_mimi_streaming.py): the tiny preset, 8 frames of noise, sines, silence and
# speech, batch 2, kyutai's weights randomised with calibrated codebooks over seeds 0-2 (/tmp/measure_mimi.py,
# 2026-12-01, torch 2.13 / jax 0.10.2 CPU). fp32 max|d|/rms and mae/rms of every stage output (SEANet convolutions,
# transformer layers, latent, dequantized latent, upsample): kyutai->ours 2.1e-6 / 3.4e-7, ref<->flax 2.3e-6 /
# 3.6e-7 (decoder.stages.1); decoded audio 1.8e-6 / 3.1e-7 and 2.0e-6 / 3.2e-7. Codes: 100% equal, every pair,
# signal and seed (the real size: 100% for the 8 codebooks Moshi uses, measured by the ref port's author). Streaming
# (ref, flax) against the same port's full pass: codes identical, audio <= 5.5e-7 (tiny), 1.3e-6 (real size).
_MIMI_FP32 = Tolerance(
    atol=1e-5, rtol=0.0, mae=1.5e-6,
    why="fp32 measured max 2.3e-6 / mae 3.6e-7 (stages), 2.0e-6 / 3.2e-7 (audio), every class; bound ~4x",
)  # fmt: skip
_set("float32", ("mimi_stage", "mimi_audio", "mimi_stream_audio"), (OURS, UPSTREAM_OURS, UPSTREAM), _MIMI_FP32)
# The real codec (the full-size checks beside any LM preset above tiny: parity/test_full_size.py::test_mimi, kyutai ->
# flax, 24 frames of speech, batch 2), `python bench/measure_full_size.py --preset small --parts mimi --seeds 0 1 2`
# (CPU, 2026-12-01): every stage 7.9e-6 / mae 1.1e-6, audio 7.3e-6 / 1.1e-6, codes 100% equal; 3-4x the tiny codec's
# (512-wide transformer, 1.92 s of audio through the SEANet). Bound ~4x, as above.
_set("float32", (sized("mimi_stage", "mimi"), sized("mimi_audio", "mimi")), UPSTREAM_OURS, Tolerance(
    atol=3e-5, rtol=0.0, mae=4.5e-6, why="the real Mimi, fp32 measured 7.9e-6 / mae 1.1e-6 (stages and audio)",
))  # fmt: skip
# bf16 (`python bench/measure_tolerances.py --components mimi --examples 3`: same cases, 3 seeds, every signal;
# rerun 2026-12-01 with HF's Mimi): ref<->flax decode bit-exact (0.0); encode 3.5e-2 / mae 2.3e-3
# (encoder_transformer.layers.1: a bf16 matmul one ulp apart spreads, as in the LM); kyutai->ours decode 7.1e-2 /
# mae 1.2e-2 (kyutai's bf16 attention and LayerNorm casts); hf->ours encode 8.9e-2 / mae 1.1e-2, decode 5.8e-2 /
# 1.1e-2; kyutai->hf decode 4.9e-2 / 6.6e-3. kyutai cannot encode in bf16 on CPU (torch.cdist has no bf16 kernel);
# HF can. Bounds ~2x the kyutai measurements (HF's encode: 1.7x, its mae 2.3x).
_set("bfloat16", ("mimi_stage", "mimi_audio"), OURS, Tolerance(
    atol=8e-2, rtol=0.0, mae=5e-3, why="bf16 ref<->flax measured 3.5e-2 / mae 2.3e-3 (encode), 0.0 (decode)",
))  # fmt: skip
_set("bfloat16", ("mimi_stage", "mimi_audio"), (UPSTREAM_OURS, UPSTREAM), Tolerance(
    atol=1.5e-1, rtol=0.0, mae=2.5e-2,
    why="bf16 kyutai->ours decode measured 7.1e-2 / mae 1.2e-2, hf->ours encode 8.9e-2 / mae 1.1e-2"))  # fmt: skip
_set("int64", "mimi_stream_codes", (OURS, UPSTREAM_OURS, UPSTREAM), Tolerance(
    atol=0.0, rtol=0.0, mae=0.0, why="streaming vs full of the same weights: codes measured identical",
))  # fmt: skip
