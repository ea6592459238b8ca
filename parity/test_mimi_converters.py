"""Mimi weight conversion (`component="mimi"` and its parts, converters/mimi.py): kyutai <-> ref <-> flax, and
kyutai <-> hf (converters/mimi_hf.py), hf reaching ref and flax through kyutai.

The layouts are the real modules' (kyutai's and transformers' MimiModel at the tiny, a deeper and the real size, the
last on the meta device; models_ref.mimi and models_flax.mimi); round trips are bit-exact in fp32 and bf16;
every bad key is named (missing, unexpected, misshaped, and an uninitialised kyutai codebook, either way through hf);
the 96M real size is checked key by key without a weight. What each table computes, and a negative control per
transform, are parity/test_mimi_converter_tables.py.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
import pytest
import torch
from flax import nnx

from converters import (
    ConversionError,
    convert,
    convert_shapes,
    expected_shapes,
    find_path,
    torch_state,
    validate_shapes,
)
from converters import mimi as mimi_kinds
from moshi_spec import MimiConfig
from parity.harness.converter_cases import DTYPES, assert_bit_equal
from parity.harness.mimi import kyutai_config
from parity.harness.mimi_hf import hf_config

TINY = MimiConfig.tiny()
# Two residual blocks per stage and three stages: kyutai's Sequential indices move (stage runs of 4 entries).
DEEP = TINY.replace(sample_rate=3200, seanet=TINY.seanet.replace(n_residual_layers=2, ratios=(2, 4, 2)))
CONFIGS = [pytest.param(TINY, id="tiny"), pytest.param(DEEP, id="deep")]
REAL_SIZE = 96_151_393  # numbers in kyutai's released Mimi state dict (32 `_initialized` flags included)
FLAG = "quantizer.rvq_rest.vq.layers.1._codebook._initialized"


def kyutai_mimi(cfg: MimiConfig, device: str = "cpu") -> torch.nn.Module:
    """kyutai's MimiModel for cfg, freshly built (its codebooks uninitialised); "meta": no memory."""
    from moshi.models import loaders

    with torch.device(device):
        return loaders.get_mimi(None, kyutai_config(cfg), device=device, num_codebooks=cfg.num_codebooks)


@cache
def kyutai_shapes(cfg: MimiConfig) -> dict[str, tuple[int, ...]]:
    """kyutai's keys and shapes; the real size is built on the meta device (small ones are faster on the CPU)."""
    device = "meta" if cfg == MimiConfig.mimi() else "cpu"
    return {k: tuple(v.shape) for k, v in kyutai_mimi(cfg, device).state_dict().items()}


def hf_mimi(cfg: MimiConfig, device: str = "cpu") -> torch.nn.Module:
    """transformers' MimiModel for cfg (parity.harness.mimi_hf.hf_config), random init; "meta": no memory."""
    from transformers import MimiModel

    with torch.device(device):
        return MimiModel(hf_config(cfg)).eval()


@cache
def hf_shapes(cfg: MimiConfig) -> dict[str, tuple[int, ...]]:
    device = "meta" if cfg == MimiConfig.mimi() else "cpu"
    return {k: tuple(v.shape) for k, v in hf_mimi(cfg, device).state_dict().items()}


def random_kyutai(cfg: MimiConfig = TINY, dtype: str = "float32", seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays of kyutai's Mimi layout, every codebook's `_initialized` flag 1 (a trained codebook's)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in expected_shapes("kyutai", "mimi", cfg).items():
        x = np.ones(shape) if key.endswith("._initialized") else rng.standard_normal(shape)
        state[key] = x.astype(np.float32).astype(DTYPES[dtype])
    return state


def conversion_error(state: dict, src: str = "kyutai", dst: str = "flax", **kwargs) -> str:
    with pytest.raises(ConversionError) as err:
        convert(state, src=src, dst=dst, cfg=kwargs.pop("cfg", TINY), component=kwargs.pop("component", "mimi"))
    return str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# Layouts are the real modules'


def check_kyutai_layout(cfg: MimiConfig) -> None:
    assert kyutai_shapes(cfg) == expected_shapes("kyutai", "mimi", cfg)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_kyutai_layout_is_kyutais_state_dict(cfg):
    check_kyutai_layout(cfg)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_hf_layout_is_transformers_state_dict(cfg):
    assert hf_shapes(cfg) == expected_shapes("hf", "mimi", cfg)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_ref_and_flax_layouts_are_our_modules(cfg):
    from models_flax.mimi import MimiModel as FlaxMimi
    from models_ref.mimi import MimiModel as RefMimi

    ref = {k: tuple(v.shape) for k, v in RefMimi(cfg).state_dict().items()}
    assert ref == expected_shapes("ref", "mimi", cfg)
    flax = nnx.to_flat_state(nnx.state(nnx.eval_shape(lambda: FlaxMimi(cfg, rngs=nnx.Rngs(0))), nnx.Param))
    assert {".".join(map(str, p)): v.get_value().shape for p, v in flax} == expected_shapes("flax", "mimi", cfg)


def test_kyutai_sequential_indices_count_the_elus():
    """Encoder stage i: [residual blocks, ELU, downsample]; decoder stage i: [ELU, upsample, residual blocks]."""
    encoder = {name: i for name, i, _, _ in mimi_kinds.seanet_modules(DEEP.seanet, "encoder")}
    decoder = {name: i for name, i, _, _ in mimi_kinds.seanet_modules(DEEP.seanet, "decoder")}
    assert encoder == {
        "input_conv": 0, "stages.0.residuals.0": 1, "stages.0.residuals.1": 2, "stages.0.downsample": 4,
        "stages.1.residuals.0": 5, "stages.1.residuals.1": 6, "stages.1.downsample": 8, "stages.2.residuals.0": 9,
        "stages.2.residuals.1": 10, "stages.2.downsample": 12, "output_conv": 14,
    }  # fmt: skip
    assert decoder == {
        "input_conv": 0, "stages.0.upsample": 2, "stages.0.residuals.0": 3, "stages.0.residuals.1": 4,
        "stages.1.upsample": 6, "stages.1.residuals.0": 7, "stages.1.residuals.1": 8, "stages.2.upsample": 10,
        "stages.2.residuals.0": 11, "stages.2.residuals.1": 12, "output_conv": 14,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Round trips and paths


def check_round_trip(cfg: MimiConfig = TINY, dtype: str = "float32") -> None:
    state = random_kyutai(cfg, dtype)
    chain, current, seen = ["kyutai", "ref", "flax", "ref", "kyutai"], state, {}
    for src, dst in itertools.pairwise(chain):
        current = convert(current, src=src, dst=dst, cfg=cfg, component="mimi")
        assert {v.dtype for v in current.values()} == {DTYPES[dtype]}, (src, dst)
        if dst in seen:
            assert_bit_equal(current, seen[dst])
        seen[dst] = current
    assert_bit_equal(current, state)
    assert_bit_equal(convert(state, src="kyutai", dst="flax", cfg=cfg, component="mimi"), seen["flax"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_round_trip_kyutai_ref_flax_is_bit_exact(cfg, dtype):
    check_round_trip(cfg, dtype)


def test_paths_mimi_direct_lm_unchanged():
    assert find_path("kyutai", "flax", "mimi") == ["kyutai", "ref", "flax"]
    assert find_path("flax", "kyutai", "mimi") == ["flax", "ref", "kyutai"]
    assert find_path("kyutai", "flax", "lm") == ["kyutai", "hf", "ref", "flax"]
    assert find_path("kyutai", "ref", "attention") == ["kyutai", "hf", "ref"]  # the LM's attention keeps its path


def test_paths_through_hf():
    """kyutai <-> hf is direct (the LM's edge, with Mimi's rows); hf reaches our formats through kyutai (hf <-> ref
    has no Mimi rows)."""
    assert find_path("kyutai", "hf", "mimi") == ["kyutai", "hf"]
    assert find_path("hf", "flax", "mimi") == ["hf", "kyutai", "ref", "flax"]
    assert find_path("ref", "hf", "mimi") == ["ref", "kyutai", "hf"]
    assert find_path("hf", "kyutai", "lm") == ["hf", "kyutai"]


def check_round_trip_hf(cfg: MimiConfig = TINY, dtype: str = "float32") -> None:
    """kyutai -> hf -> kyutai and hf -> flax -> hf bit for bit; hf -> flax is kyutai -> flax."""
    state = random_kyutai(cfg, dtype)
    hf = convert(state, src="kyutai", dst="hf", cfg=cfg, component="mimi")
    assert {v.dtype for v in hf.values()} == {DTYPES[dtype]}
    assert_bit_equal(convert(hf, src="hf", dst="kyutai", cfg=cfg, component="mimi"), state)
    flax = convert(hf, src="hf", dst="flax", cfg=cfg, component="mimi")
    assert_bit_equal(flax, convert(state, src="kyutai", dst="flax", cfg=cfg, component="mimi"))
    assert_bit_equal(convert(flax, src="flax", dst="hf", cfg=cfg, component="mimi"), hf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_round_trip_through_hf_is_bit_exact(cfg, dtype):
    check_round_trip_hf(cfg, dtype)


def test_parts_convert_alone_under_any_prefix():
    state = random_kyutai(DEEP)
    layers = {k: v for k, v in state.items() if k.startswith("decoder_transformer.")}
    ours = convert(layers, src="kyutai", dst="flax", cfg=DEEP.transformer, component="mimi_transformer_layer")
    whole = convert(state, src="kyutai", dst="flax", cfg=DEEP, component="mimi")
    moved = {k.replace(".transformer.layers.", ".layers."): v for k, v in ours.items()}  # the layer prefixes stay
    assert_bit_equal(moved, {k: v for k, v in whole.items() if k.startswith("decoder_transformer.")})
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    flax = convert(encoder, src="kyutai", dst="flax", cfg=DEEP.seanet, component="seanet_encoder")
    assert_bit_equal(flax, {k[len("encoder.") :]: v for k, v in whole.items() if k.startswith("encoder.")})


# ----------------------------------------------------------------------------------------------------------------------
# Every bad key named


def test_missing_unexpected_and_misshaped_keys_are_named_together():
    state = random_kyutai()
    del state["encoder.model.4.block.1.conv.conv.weight"]
    state["quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum"] = np.zeros((16, 8), np.float32)  # n_q 4: 3 rest
    state["upsample.convtr.convtr.convtr.weight"] = np.zeros((16, 16, 4), np.float32)  # not depthwise
    message = conversion_error(state)
    assert "3 problem(s)" in message
    assert "missing     encoder.model.4.block.1.conv.conv.weight: expected (4, 8, 3), got nothing" in message
    assert (
        "unexpected  quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum: expected nothing, got (16, 8)" in message
    )
    assert "wrong shape upsample.convtr.convtr.convtr.weight: expected (16, 1, 4), got (16, 16, 4)" in message


def test_a_torch_layout_kernel_in_a_flax_state_is_named():
    flax = convert(random_kyutai(), src="kyutai", dst="flax", cfg=TINY, component="mimi")
    flax["decoder.stages.0.upsample.kernel"] = flax["decoder.stages.0.upsample.kernel"].transpose(1, 2, 0)
    message = conversion_error(flax, src="flax", dst="kyutai")
    assert "wrong shape decoder.stages.0.upsample.kernel: expected (8, 16, 8), got (16, 8, 8)" in message


def check_uninitialised_codebook_is_refused() -> None:
    state = random_kyutai()
    state[FLAG] = np.zeros(1, np.float32)
    message = conversion_error(state, dst="ref")
    assert f"'{FLAG}'" in message and "never initialized" in message


def test_uninitialised_codebook_is_refused_naming_its_key():
    check_uninitialised_codebook_is_refused()
    # A freshly built kyutai Mimi (all-zero codebooks, flags 0): its first codebook is named.
    fresh = torch_state(kyutai_mimi(TINY))
    message = conversion_error(fresh)
    assert "'quantizer.rvq_first.vq.layers.0._codebook._initialized'" in message
    # A codebook converted on its own, under any prefix, is named in full too.
    book = {k: v for k, v in fresh.items() if k.startswith("quantizer.rvq_rest.vq.layers.2.")}
    message = conversion_error(book, cfg=mimi_kinds.CodebookDims(bins=16, dim=8), component="codebook")
    assert "'quantizer.rvq_rest.vq.layers.2._codebook._initialized'" in message


def check_hf_refuses_uninitialised_codebooks() -> None:
    """kyutai -> hf refuses an untrained codebook (HF never reads its flag, so it would encode everything to code 0);
    so does hf -> kyutai, naming the HF key."""
    state = random_kyutai()
    state[FLAG] = np.zeros(1, np.float32)
    message = conversion_error(state, dst="hf")
    assert f"'{FLAG}'" in message and "never initialized" in message
    hf = convert(random_kyutai(), src="kyutai", dst="hf", cfg=TINY, component="mimi")
    key = "quantizer.acoustic_residual_vector_quantizer.layers.1.codebook.initialized"
    hf[key] = np.zeros(1, np.float32)
    message = conversion_error(hf, src="hf", dst="kyutai")
    assert f"'{key}'" in message and "never initialized" in message


def test_uninitialised_codebook_is_refused_through_hf():
    check_hf_refuses_uninitialised_codebooks()


@pytest.mark.parametrize("dtype", DTYPES)
def test_ref_to_kyutai_writes_initialised_flags(dtype):
    ref = convert(random_kyutai(dtype=dtype), src="kyutai", dst="ref", cfg=TINY, component="mimi")
    assert not [k for k in ref if "_initialized" in k]
    kyutai = convert(ref, src="ref", dst="kyutai", cfg=TINY, component="mimi")
    flags = {k: v for k, v in kyutai.items() if k.endswith("._initialized")}
    assert len(flags) == TINY.n_q
    for key, flag in flags.items():
        assert flag.dtype == DTYPES[dtype] and flag.tolist() == [1.0], key


# ----------------------------------------------------------------------------------------------------------------------
# Real size: every key and shape, no weight allocated


def test_real_size_keys_and_shapes_without_weights():
    cfg = MimiConfig.mimi()
    kyutai = kyutai_shapes(cfg)
    assert sum(math.prod(s) for s in kyutai.values()) == REAL_SIZE == sum(cfg.num_params().values())
    assert validate_shapes(kyutai, fmt="kyutai", cfg=cfg, component="mimi") == kyutai
    ref = convert_shapes(kyutai, src="kyutai", dst="ref", cfg=cfg, component="mimi")
    flax = convert_shapes(kyutai, src="kyutai", dst="flax", cfg=cfg, component="mimi")
    assert ref == expected_shapes("ref", "mimi", cfg) and flax == expected_shapes("flax", "mimi", cfg)
    assert sum(math.prod(s) for s in flax.values()) == REAL_SIZE - cfg.n_q  # the flags are not ours
    assert convert_shapes(flax, src="flax", dst="kyutai", cfg=cfg, component="mimi") == kyutai
    assert flax["decoder.stages.3.upsample.kernel"] == (8, 128, 64)
    assert flax["quantizer.acoustic.codebooks.30.embedding_sum"] == (2048, 256)
    hf = convert_shapes(kyutai, src="kyutai", dst="hf", cfg=cfg, component="mimi")
    assert hf == hf_shapes(cfg) and sum(math.prod(s) for s in hf.values()) == REAL_SIZE  # HF keeps the flags
    assert convert_shapes(hf, src="hf", dst="flax", cfg=cfg, component="mimi") == flax
    assert convert_shapes(hf, src="hf", dst="kyutai", cfg=cfg, component="mimi") == kyutai
    bad = dict(kyutai) | {"decoder.model.14.conv.conv.weight": (1, 64, 7)}
    with pytest.raises(
        ConversionError, match=r"wrong shape decoder\.model\.14\.conv\.conv\.weight: expected \(1, 64, 3\)"
    ):
        validate_shapes(bad, fmt="kyutai", cfg=cfg, component="mimi")
