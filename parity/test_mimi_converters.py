"""Mimi weight conversion (`component="mimi"` and its parts, converters/mimi.py): kyutai <-> ref <-> flax, and
kyutai <-> hf (converters/mimi_hf.py), hf reaching ref and flax through kyutai.

The layouts are the real modules' (kyutai's and transformers' MimiModel at the tiny, a deeper and the real size, the
last on the meta device; models_ref.mimi and models_flax.mimi); round trips are bit-exact in fp32 and bf16; what each
table does is checked against what the modules compute (kyutai's attention against ours after the q/k/v split and
against HF's after its rope permutation, torch convolutions against models_flax.mimi's with the converted kernels);
every bad key is named (missing, unexpected, misshaped, and an uninitialised kyutai codebook, either way through hf);
the 96M real size is checked key by key without a weight. Each transform the Mimi tables use has a negative control:
a plausible wrong version fails one of those checks (for hf: the table without the rope permutation round-trips bit
for bit and fails the attention check).
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
    TableEdge,
    convert,
    convert_shapes,
    expected_shapes,
    find_path,
    kyutai_hf,
    load_torch,
    mimi_hf,
    registry,
    torch_state,
    transforms,
    validate_shapes,
)
from converters import mimi as mimi_kinds
from converters.rules import Pair
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
# What the tables do


def test_kyutai_weights_land_on_our_modules():
    state = random_kyutai()
    ref = convert(state, src="kyutai", dst="ref", cfg=TINY, component="mimi")
    same = {
        "encoder.model.3.conv.conv.weight": "encoder.stages.0.downsample.weight",
        "encoder.model.4.block.1.conv.conv.bias": "encoder.stages.1.residuals.0.conv1.bias",
        "encoder.model.8.conv.conv.weight": "encoder.output_conv.weight",
        "decoder.model.5.convtr.convtr.weight": "decoder.stages.1.upsample.weight",
        "decoder.model.6.block.3.conv.conv.weight": "decoder.stages.1.residuals.0.conv2.weight",
        "downsample.conv.conv.conv.weight": "downsample.weight",
        "upsample.convtr.convtr.convtr.weight": "upsample.weight",
        "encoder_transformer.transformer.layers.1.self_attn.out_projs.0.weight": "encoder_transformer.layers.1."
        "self_attn.o_proj.weight",
        "decoder_transformer.transformer.layers.0.linear1.weight": "decoder_transformer.layers.0.mlp.fc1.weight",
        "decoder_transformer.transformer.layers.0.layer_scale_2.scale": "decoder_transformer.layers.0.layer_scale_2."
        "scale",
        "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum": "quantizer.semantic.codebooks.0.embedding_sum",
        "quantizer.rvq_rest.vq.layers.2._codebook.cluster_usage": "quantizer.acoustic.codebooks.2.cluster_usage",
    }
    for kyutai_key, ref_key in same.items():
        assert np.array_equal(ref[ref_key], state[kyutai_key]), kyutai_key
    fused = state["encoder_transformer.transformer.layers.0.self_attn.in_projs.0.weight"]
    for n, rows in zip("qkv", np.split(fused, 3), strict=True):  # rows untouched: our Mimi keeps interleaved rope
        assert np.array_equal(ref[f"encoder_transformer.layers.0.self_attn.{n}_proj.weight"], rows)
    proj = state["quantizer.rvq_rest.input_proj.weight"]
    assert proj.shape == (8, 16, 1) and np.array_equal(ref["quantizer.acoustic.input_proj.weight"], proj[:, :, 0])
    flax = convert(ref, src="ref", dst="flax", cfg=TINY, component="mimi")
    conv, convtr = ref["decoder.input_conv.weight"], ref["decoder.stages.0.upsample.weight"]
    assert np.array_equal(flax["decoder.input_conv.kernel"], np.einsum("oik->kio", conv))
    assert np.array_equal(flax["decoder.stages.0.upsample.kernel"], np.einsum("iok->kio", convtr))
    assert np.array_equal(flax["quantizer.acoustic.input_proj.kernel"], proj[:, :, 0].T)


def hf_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """transformers' convert_mimi_checkpoint_to_pytorch.py `permute`, written out: per head, rows (2i, 2i + 1) ->
    (i, i + hd/2)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def test_kyutai_weights_land_on_hf_modules():
    state = random_kyutai()
    hf = convert(state, src="kyutai", dst="hf", cfg=TINY, component="mimi")
    same = {
        "encoder.model.0.conv.conv.weight": "encoder.encoder_seanet.layers.0.conv.weight",
        "encoder.model.4.block.1.conv.conv.bias": "encoder.encoder_seanet.layers.4.block.1.conv.bias",
        "decoder.model.5.convtr.convtr.weight": "decoder.decoder_seanet.layers.5.conv.weight",
        "downsample.conv.conv.conv.weight": "encoder.downsample.conv.weight",
        "upsample.convtr.convtr.convtr.weight": "decoder.upsample.conv.weight",
        "encoder_transformer.transformer.layers.1.norm1.bias": "encoder.encoder_transformer.layers.1."
        "input_layernorm.bias",
        "decoder_transformer.transformer.layers.0.layer_scale_2.scale": "decoder.decoder_transformer.layers.0."
        "mlp_layer_scale.scale",
        "decoder_transformer.transformer.layers.1.linear2.weight": "decoder.decoder_transformer.layers.1.mlp.fc2."
        "weight",
        "encoder_transformer.transformer.layers.0.self_attn.out_projs.0.weight": "encoder.encoder_transformer.layers.0."
        "self_attn.o_proj.weight",
        "quantizer.rvq_rest.input_proj.weight": "quantizer.acoustic_residual_vector_quantizer.input_proj.weight",
        "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum": "quantizer.semantic_residual_vector_quantizer."
        "layers.0.codebook.embed_sum",
        "quantizer.rvq_rest.vq.layers.2._codebook.cluster_usage": "quantizer.acoustic_residual_vector_quantizer."
        "layers.2.codebook.cluster_usage",
        "quantizer.rvq_rest.vq.layers.1._codebook._initialized": "quantizer.acoustic_residual_vector_quantizer."
        "layers.1.codebook.initialized",
    }
    for kyutai_key, hf_key in same.items():
        assert np.array_equal(hf[hf_key], state[kyutai_key]), kyutai_key
    heads = TINY.transformer.num_heads
    fused = state["decoder_transformer.transformer.layers.1.self_attn.in_projs.0.weight"]
    q, k, v = np.split(fused, 3)
    prefix = "decoder.decoder_transformer.layers.1.self_attn."
    assert np.array_equal(hf[prefix + "q_proj.weight"], hf_permute(q, heads))
    assert np.array_equal(hf[prefix + "k_proj.weight"], hf_permute(k, heads))
    assert np.array_equal(hf[prefix + "v_proj.weight"], v)
    assert not np.array_equal(hf_permute(q, heads), q)  # the permutation moves rows at this size


def check_hf_attention_matches_kyutai() -> None:
    """kyutai's Mimi attention and HF's MimiAttention (its rope, its eager attention) compute the same after
    kyutai -> hf."""
    from transformers.models.mimi import modeling_mimi

    from parity.harness.adapters.hf import additive_mask

    torch.manual_seed(0)
    theirs = kyutai_mimi(TINY).encoder_transformer.transformer.layers[0].self_attn
    config, cfg = hf_config(TINY), TINY.transformer
    hf, rope = modeling_mimi.MimiAttention(config, layer_idx=0).eval(), modeling_mimi.MimiRotaryEmbedding(config)
    load_torch(hf, convert(torch_state(theirs), src="kyutai", dst="hf", cfg=cfg, component="mimi_attention"))
    x = torch.randn(2, cfg.context - 1, cfg.dim)
    positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    with torch.no_grad():
        want = theirs(x, x, x)
        got, _ = hf(
            x, attention_mask=additive_mask(positions, cfg.context, x.dtype), position_embeddings=rope(x, positions)
        )
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_hf_attention_computes_kyutais():
    check_hf_attention_matches_kyutai()


def check_attention_matches_kyutai() -> None:
    """kyutai's Mimi attention and ours (models_ref.attention) compute the same after kyutai -> ref."""
    from models_ref.attention import Attention

    torch.manual_seed(0)
    theirs = kyutai_mimi(TINY).encoder_transformer.transformer.layers[0].self_attn
    cfg = TINY.transformer
    ours = Attention(cfg)
    load_torch(ours, convert(torch_state(theirs), src="kyutai", dst="ref", cfg=cfg, component="mimi_attention"))
    x = torch.randn(2, cfg.context - 1, cfg.dim)
    positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    with torch.no_grad():
        want, (got, _) = theirs(x, x, x), ours(x, positions=positions)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)  # (torch.testing imports 1 s)


def test_attention_computes_kyutais():
    check_attention_matches_kyutai()


def check_flax_convolutions_compute_torchs() -> None:
    """Each converted Flax kernel, used by models_flax.mimi.conv as documented, gives torch's convolution of the ref
    weight: a conv with stride, the transposed conv of a decoder stage and the depthwise upsampling one."""
    from models_flax.mimi.conv import conv1d, conv_transpose1d

    ref = convert(random_kyutai(), src="kyutai", dst="ref", cfg=TINY, component="mimi")
    flax = convert(ref, src="ref", dst="flax", cfg=TINY, component="mimi")
    x = np.random.default_rng(1).standard_normal((2, 16, 9)).astype(np.float32)
    cases = [
        ("decoder.input_conv", torch.nn.functional.conv1d, conv1d, {}),
        ("downsample", torch.nn.functional.conv1d, conv1d, {"stride": 2}),
        ("decoder.stages.0.upsample", torch.nn.functional.conv_transpose1d, conv_transpose1d, {"stride": 4}),
        ("upsample", torch.nn.functional.conv_transpose1d, conv_transpose1d, {"stride": 2, "groups": 16}),
    ]
    for module, torch_fn, flax_fn, kw in cases:
        want = torch_fn(torch.from_numpy(x), torch.from_numpy(ref[f"{module}.weight"]), **kw).numpy()
        got = np.asarray(flax_fn(x, flax[f"{module}.kernel"], **kw))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=module)


def test_flax_kernels_compute_torchs_convolutions():
    check_flax_convolutions_compute_torchs()


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


# ----------------------------------------------------------------------------------------------------------------------
# Negative controls: a plausible wrong version of each transform (both directions, so that round trips still hold
# where they can) fails a check above.


def _each(fn):
    return lambda inputs, cfg: [[fn(x) for x in inputs[0]]]


def _split_q_v_k(inputs, cfg):
    q, v, k = np.split(inputs[0][0], 3)
    return [[q], [k], [v]]


def _join_q_v_k(inputs, cfg):
    (q,), (k,), (v,) = inputs
    return [[np.concatenate([q, v, k])]]


def _drop_unchecked(inputs, cfg):
    return [inputs[1]]


def _add_zero_flag(inputs, cfg):
    ((usage,),) = inputs
    return [[np.zeros((1,), usage.dtype)], [usage]]


REAL_SEANET_MODULES = mimi_kinds.seanet_modules


def _indices_without_elus(s, side):
    return [(n, i, kind, c) for i, (n, _, kind, c) in enumerate(REAL_SEANET_MODULES(s, side))]


CONV_AS_CONVTR = {
    "conv_to_flax": _each(lambda x: x.transpose(2, 0, 1)),
    "conv_from_flax": _each(lambda x: x.transpose(1, 2, 0)),
}
CONV_TAPS_REVERSED = {
    "conv_to_flax": _each(lambda x: x.transpose(2, 1, 0)[::-1]),
    "conv_from_flax": _each(lambda x: x[::-1].transpose(2, 1, 0)),
}
CONVTR_AS_CONV = {
    "convtr_to_flax": _each(lambda x: x.transpose(2, 1, 0)),
    "convtr_from_flax": _each(lambda x: x.transpose(2, 1, 0)),
}
CONVTR_TAPS_REVERSED = {
    "convtr_to_flax": _each(lambda x: x.transpose(2, 0, 1)[::-1]),
    "convtr_from_flax": _each(lambda x: x[::-1].transpose(1, 2, 0)),
}

NEGATIVE_CONTROLS = {
    # kyutai's fused rows read as [q; v; k]: bit-exact both ways, but the attention is not kyutai's
    "split_qkv rows [q; v; k]": ({"split_qkv": _split_q_v_k, "join_qkv": _join_q_v_k}, check_attention_matches_kyutai),
    # a Conv1d kernel laid out like a transposed convolution's, (K, out, in): non-square kernels are misshaped
    "conv kernel as (K, out, in)": (CONV_AS_CONVTR, check_round_trip),
    # a ConvTranspose1d kernel laid out like a convolution's, (K, out/g, in)
    "convtr kernel as (K, out/g, in)": (CONVTR_AS_CONV, check_round_trip),
    # the right axes but the taps in reverse order (a true convolution's kernel): every shape and round trip holds,
    # the Flax convolutions do not compute torch's
    "conv taps reversed": (CONV_TAPS_REVERSED, check_flax_convolutions_compute_torchs),
    "convtr taps reversed": (CONVTR_TAPS_REVERSED, check_flax_convolutions_compute_torchs),
    # kyutai's 1x1 projection squeezed and transposed
    "conv1x1_to_linear transposed": (
        {"conv1x1_to_linear": _each(lambda x: x[:, :, 0].T), "linear_to_conv1x1": _each(lambda x: x.T[:, :, None])},
        check_round_trip,
    ),
    # the flag dropped unchecked: an untrained codebook goes through
    "drop_initialized unchecked": ({"drop_initialized": _drop_unchecked}, check_uninitialised_codebook_is_refused),
    # the flag written as 0: kyutai -> ref -> kyutai is not bit-exact (and the result would be refused)
    "add_initialized writes 0": ({"add_initialized": _add_zero_flag}, check_round_trip),
}


def _check_unchecked(inputs, cfg):
    return [inputs[0]]


NEGATIVE_CONTROLS |= {
    # the codebook flag passed to HF unchecked: an untrained kyutai codebook goes through to HF, which ignores it
    "check_initialized unchecked": ({"check_initialized": _check_unchecked}, check_hf_refuses_uninitialised_codebooks),
}


@pytest.mark.parametrize("name", NEGATIVE_CONTROLS)
def test_negative_control_of_each_transform(name, monkeypatch):
    bugs, check = NEGATIVE_CONTROLS[name]
    check()  # holds with the real transforms
    for transform, buggy in bugs.items():
        monkeypatch.setitem(transforms.TRANSFORMS, transform, buggy)
    with pytest.raises((AssertionError, ConversionError, pytest.fail.Exception)):
        check()


def test_negative_control_of_the_sequential_indices(monkeypatch):
    """kyutai's indices counted without its ELU entries: the layout is no longer kyutai's state dict."""
    check_kyutai_layout(DEEP)
    monkeypatch.setattr(mimi_kinds, "seanet_modules", _indices_without_elus)
    with pytest.raises(AssertionError):
        check_kyutai_layout(DEEP)


def _without_rope_permutation(rows: tuple[Pair, ...]) -> tuple[Pair, ...]:
    """The Mimi attention rows with the q/k/v split kept and the rope permutation left out (`split_qkv`, the
    kyutai <-> ref transform)."""
    return tuple(Pair(row.a, row.b, "split_qkv", "join_qkv") if row.a_to_b == "unfuse_qkv" else row for row in rows)


def test_negative_control_hf_table_without_rope_permutation(monkeypatch):
    """kyutai <-> hf with the q/k rows left in kyutai's interleaved order: every shape holds and round trips stay bit
    for bit, but HF's attention (rotate_half pairs) no longer computes kyutai's."""
    check_round_trip_hf(), check_hf_attention_matches_kyutai()  # hold with the real table
    table = kyutai_hf.TABLE | mimi_hf.TABLE
    table = table | {"mimi_attention": _without_rope_permutation(table["mimi_attention"])}
    assert table["mimi_attention"] != mimi_hf.TABLE["mimi_attention"]
    monkeypatch.setitem(
        registry.EDGES,
        ("kyutai", "hf"),
        TableEdge("kyutai", "hf", {k: tuple(p.forward() for p in v) for k, v in table.items()}),
    )
    monkeypatch.setitem(
        registry.EDGES,
        ("hf", "kyutai"),
        TableEdge("hf", "kyutai", {k: tuple(p.backward() for p in v) for k, v in table.items()}),
    )
    check_round_trip_hf()
    with pytest.raises(AssertionError):
        check_hf_attention_matches_kyutai()
