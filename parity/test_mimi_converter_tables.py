"""What the Mimi conversion tables compute (converters/mimi.py, kyutai_ref.py, mimi_hf.py, ref_flax.py): kyutai's
weights land on our modules and HF's where they belong; kyutai's attention equals ours after the q/k/v split and HF's
after its rope permutation; torch's convolutions equal models_flax.mimi's with the converted kernels. Each transform
the Mimi tables use has a negative control: a plausible wrong version fails one of these checks or one of
parity/test_mimi_converters.py's (for hf: the table without the rope permutation round-trips bit for bit and fails the
attention check).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters import (
    ConversionError,
    TableEdge,
    convert,
    kyutai_hf,
    load_torch,
    mimi_hf,
    registry,
    torch_state,
    transforms,
)
from converters import mimi as mimi_kinds
from converters.rules import Pair
from parity.harness.mimi_hf import hf_config
from parity.test_mimi_converters import (
    DEEP,
    TINY,
    check_hf_refuses_uninitialised_codebooks,
    check_kyutai_layout,
    check_round_trip,
    check_round_trip_hf,
    check_uninitialised_codebook_is_refused,
    kyutai_mimi,
    random_kyutai,
)

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
