"""Builds the whole LM in kyutai (upstream origin), ref and flax from one set of random kyutai weights, and runs it.

Weights go kyutai -> ref and kyutai -> flax only through `converters.convert` "lm" (the rope permutation, fused qkv
split and per-codebook stacking are all on the path). Each run returns the logits, their masks and the temporal hidden
states (the embedding sum and every layer's output), so that drift can be measured layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from jax import lax

import converters
from models_flax.lm import LM as FlaxLM
from models_ref import origin
from models_ref.lm import LM as RefLM
from moshi_spec import LMConfig
from parity.harness.arrays import to_numpy
from parity.harness.implementations import JAX_DTYPES, TORCH_DTYPES, randomize_


def lm_config(hf_model) -> LMConfig:
    """The LMConfig an HF model was built from (kept on the model by build_lms)."""
    return hf_model.moshi_parity_config


@dataclass
class LMRun:
    text_logits: np.ndarray  # (B, 1, T, text_card)
    text_mask: np.ndarray
    audio_logits: np.ndarray  # (B, dep_q, T, card)
    audio_mask: np.ndarray
    hidden: list[np.ndarray]  # L + 1 arrays (B, T, D)


def random_codes(cfg: LMConfig, batch: int, length: int, *, seed: int, zero_fraction: float = 0.0) -> np.ndarray:
    """Valid codes (B, 1 + n_q, T): text ids < text_card, audio ids < card, some set to the zero token -1."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, cfg.card, size=(batch, 1 + cfg.n_q, length))
    codes[:, 0] = rng.integers(0, cfg.text_card, size=(batch, length))
    codes[rng.random(codes.shape) < zero_fraction] = -1
    return codes.astype(np.int64)


def build_lms(cfg: LMConfig, dtype: str, *, impls=("kyutai", "ref", "flax"), seed: int = 0) -> dict[str, object]:
    kyutai = origin.build_kyutai_lm(cfg, dtype=TORCH_DTYPES[dtype])
    randomize_(kyutai, seed)
    state = converters.torch_state(kyutai)
    out: dict[str, object] = {"kyutai": kyutai}
    if "hf" in impls:
        hf = origin.build_hf_lm(cfg, dtype=TORCH_DTYPES[dtype])
        hf.moshi_parity_config = cfg
        codec = {k: v for k, v in converters.torch_state(hf).items() if k.startswith("audio_encoder.")}
        converters.load_torch(hf, codec | converters.convert(state, src="kyutai", dst="hf", cfg=cfg, component="lm"))
        out["hf"] = hf
    if "ref" in impls:
        ref = RefLM(cfg, dtype=TORCH_DTYPES[dtype]).eval()
        converters.load_torch(ref, converters.convert(state, src="kyutai", dst="ref", cfg=cfg, component="lm"))
        out["ref"] = ref
    for name, impl in (("flax", "xla"), ("flax_pallas", "pallas")):
        if name in impls:
            dt = JAX_DTYPES[dtype]
            flax = FlaxLM(cfg, dtype=dt, param_dtype=dt, precision=lax.Precision.HIGHEST, impl=impl, rngs=nnx.Rngs(0))
            converters.load_flax(flax, converters.convert(state, src="kyutai", dst="flax", cfg=cfg, component="lm"))
            out[name] = flax
    return out


@torch.no_grad()
def _run_kyutai(lm, codes: np.ndarray) -> LMRun:
    hidden: list[torch.Tensor] = []
    hooks = [lm.transformer.register_forward_pre_hook(lambda _m, args: hidden.append(args[0]))]
    hooks += [layer.register_forward_hook(lambda _m, _a, y: hidden.append(y)) for layer in lm.transformer.layers]
    try:
        out = lm(torch.from_numpy(codes))
    finally:
        for hook in hooks:
            hook.remove()
    return LMRun(
        to_numpy(out.text_logits),
        to_numpy(out.text_mask),
        to_numpy(out.logits),
        to_numpy(out.mask),
        [to_numpy(h) for h in hidden],
    )


def run_lm(impl: str, lm, codes: np.ndarray) -> LMRun:
    if impl == "kyutai":
        return _run_kyutai(lm, codes)
    if impl == "hf":
        out = origin.call_hf_lm(lm, torch.from_numpy(codes), lm_config(lm))
        return LMRun(*(to_numpy(out[k]) for k in ("text_logits", "text_mask", "audio_logits", "audio_mask")),
                     [to_numpy(h) for h in out["hidden"]])  # fmt: skip
    if impl == "ref":
        with torch.no_grad():
            out = lm(torch.from_numpy(codes))
    else:
        out = lm(jnp.asarray(codes))
    return LMRun(
        to_numpy(out.text_logits),
        to_numpy(out.text_mask),
        to_numpy(out.audio_logits),
        to_numpy(out.audio_mask),
        [to_numpy(h) for h in out.hidden],
    )


def run_layer(impl: str, lm, layer: int, x: np.ndarray, dtype: str) -> np.ndarray:
    """Teacher forcing: layer `layer` of impl applied to a given (reference) input at positions arange(T)."""
    batch, length = x.shape[:2]
    if impl == "kyutai":
        with torch.no_grad():
            return to_numpy(
                lm.transformer.layers[layer](torch.from_numpy(x.astype(np.float32)).to(TORCH_DTYPES[dtype]))
            )
    positions = np.broadcast_to(np.arange(length), (batch, length))
    if impl == "ref":
        with torch.no_grad():
            xt = torch.from_numpy(x.astype(np.float32)).to(TORCH_DTYPES[dtype])
            return to_numpy(lm.layers[layer](xt, positions=torch.from_numpy(positions.copy()))[0])
    xj = jnp.asarray(x.astype(np.float32), JAX_DTYPES[dtype])
    return to_numpy(lm.layers[layer](xj, positions=jnp.asarray(positions))[0])
