"""Converters checked against the real upstream modules and frameworks: kyutai and HF attention and decoder layers
converted both ways compute the same (the rope permutation with a negative control that drops it), the ref -> flax
kernel transpose run through torch and nnx modules, kyutai's own load hook reading legacy fused weights as our
normalization does, and module IO and array moves (load_torch / load_flax accounting, every bfloat16 bit pattern).

The converter-only tests are in test_converters_tables.py; shared cases in converter_cases.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from converters import (
    ConversionError,
    convert,
    flax_state,
    from_jax,
    from_torch,
    load_flax,
    load_torch,
    to_jax,
    to_torch,
    torch_state,
    transforms,
)
from moshi_spec.config import TransformerConfig
from parity.harness.converter_cases import DTYPES, assert_bit_equal, legacy, make_cfg, random_state

# ----------------------------------------------------------------------------------------------------------------------
# Against the real upstream modules


def hf_config(cfg: TransformerConfig):
    from transformers.models.moshi.configuration_moshi import MoshiConfig

    config = MoshiConfig(
        hidden_size=cfg.dim, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        num_hidden_layers=1, ffn_dim=cfg.ffn_dim, audio_vocab_size=32, vocab_size=48,
        num_codebooks=cfg.num_codebooks, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    config._attn_implementation = "eager"
    return config


def hf_inputs(x):
    import torch

    B, T, _ = x.shape
    mask = torch.full((T, T), float("-inf")).triu(1).expand(B, 1, T, T)
    return {"attention_mask": mask, "position_ids": torch.arange(T).expand(B, T)}


def kyutai_attention(cfg: TransformerConfig):
    from moshi.modules.rope import RotaryEmbedding
    from moshi.modules.transformer import StreamingMultiheadAttention

    return StreamingMultiheadAttention(
        embed_dim=cfg.dim, num_heads=cfg.num_heads, causal=True, kv_repeat=cfg.num_heads // cfg.num_kv_heads,
        rope=RotaryEmbedding(interleave=True, max_period=10000.0) if cfg.rope else None,
        weights_per_step=cfg.weight_sets if cfg.flexible else 0,
    )  # fmt: skip


def kyutai_layer(cfg: TransformerConfig):
    from moshi.modules.rope import RotaryEmbedding
    from moshi.modules.transformer import StreamingTransformerLayer

    layer = StreamingTransformerLayer(
        d_model=cfg.dim, num_heads=cfg.num_heads, dim_feedforward=3 * cfg.hidden // 2, causal=True,
        norm="rms_norm_f32", gating="silu", kv_repeat=cfg.num_heads // cfg.num_kv_heads,
        rope=RotaryEmbedding(interleave=True, max_period=10000.0) if cfg.rope else None,
        weights_per_step=cfg.weight_sets if cfg.flexible else 0,
    )  # fmt: skip
    for norm in (layer.norm1, layer.norm2):  # alpha starts at ones: randomize so the mapping is exercised
        norm.alpha.data.uniform_(0.5, 1.5)
    return layer


def kyutai_to_hf_attention(kyutai, cfg: TransformerConfig, x):
    from transformers.models.moshi.modeling_moshi import MoshiAttention

    hf = MoshiAttention(hf_config(cfg), layer_idx=0, use_flexible_linear=cfg.flexible, use_rope=cfg.rope)
    load_torch(hf, convert(torch_state(kyutai), src="kyutai", dst="hf", cfg=cfg, component="attention"))
    return hf(x, **hf_inputs(x))[0]


KV_HEADS = [pytest.param(4, id="mha"), pytest.param(2, id="gqa")]


@pytest.mark.parametrize("kv_heads", KV_HEADS)
def test_kyutai_attention_converted_to_hf_computes_the_same(kv_heads, monkeypatch):
    import torch

    from parity.harness.compare import assert_parity, check_parity

    torch.manual_seed(0)
    cfg = make_cfg().replace(num_kv_heads_override=kv_heads)
    kyutai = kyutai_attention(cfg)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want = kyutai(x, x, x)
        assert_parity(want, kyutai_to_hf_attention(kyutai, cfg, x), component="attention", pair=("kyutai", "hf"),
                      expected_dtype="float32", inputs={"x": x.shape})  # fmt: skip

        # Negative control: the same conversion without the interleaved -> half rope permutation.
        monkeypatch.setattr(transforms, "interleaved_to_half", lambda w, heads: w)
        passed, metrics, _ = check_parity(want, kyutai_to_hf_attention(kyutai, cfg, x), component="attention",
                                          pair=("kyutai", "hf"), expected_dtype="float32",
                                          control="no rope permutation")  # fmt: skip
    assert not passed and metrics.max_abs > 1e-2


@pytest.mark.parametrize("kv_heads", KV_HEADS)
def test_hf_attention_converted_to_kyutai_computes_the_same(kv_heads):
    import torch
    from transformers.models.moshi.modeling_moshi import MoshiAttention

    from parity.harness.compare import assert_parity

    torch.manual_seed(1)
    cfg = make_cfg().replace(num_kv_heads_override=kv_heads)
    hf = MoshiAttention(hf_config(cfg), layer_idx=0, use_flexible_linear=False, use_rope=True)
    kyutai = kyutai_attention(cfg)
    load_torch(kyutai, convert(torch_state(hf), src="hf", dst="kyutai", cfg=cfg, component="attention"))
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert_parity(hf(x, **hf_inputs(x))[0], kyutai(x, x, x), component="attention", pair=("hf", "kyutai"),
                      expected_dtype="float32", inputs={"x": x.shape})  # fmt: skip


@pytest.mark.parametrize("flexible", [pytest.param(False, id="temporal"), pytest.param(True, id="depth")])
def test_kyutai_layer_converted_to_hf_computes_the_same(flexible):
    """Whole decoder layer: norms, fused attention, gating; depth: per-codebook weights stacked in codebook order."""
    import torch
    from transformers.models.moshi.modeling_moshi import MoshiDecoderLayer

    from parity.harness.compare import assert_parity

    torch.manual_seed(2)
    cfg = make_cfg(flexible=flexible, rope="norope" if flexible else "interleaved")
    kyutai = kyutai_layer(cfg)
    hf = MoshiDecoderLayer(hf_config(cfg), layer_idx=0, use_flexible_linear=flexible, use_rope=cfg.rope)
    load_torch(hf, convert(torch_state(kyutai), src="kyutai", dst="hf", cfg=cfg, component="decoder_layer"))
    x = torch.randn(2, 3, 16)  # T = num_codebooks: position t uses codebook t's weights in both
    with torch.no_grad():
        assert_parity(kyutai(x), hf(x, **hf_inputs(x)), component="decoder_layer", pair=("kyutai", "hf"),
                      expected_dtype="float32", inputs={"x": x.shape})  # fmt: skip


def test_ref_to_flax_gating_computes_the_same():
    """The transpose to Flax kernels, checked by running a torch and an nnx gated MLP on the same input."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from parity.harness.compare import assert_parity

    cfg = make_cfg()

    class TorchMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
            self.fc2 = torch.nn.Linear(cfg.hidden, cfg.dim, bias=False)

        def forward(self, x):
            gate, value = self.fc1(x).chunk(2, dim=-1)
            return self.fc2(torch.nn.functional.silu(gate) * value)

    class FlaxMLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(cfg.dim, cfg.ffn_dim, use_bias=False, rngs=rngs)
            self.fc2 = nnx.Linear(cfg.hidden, cfg.dim, use_bias=False, rngs=rngs)

        def __call__(self, x):
            gate, value = jnp.split(self.fc1(x), 2, axis=-1)
            return self.fc2(jax.nn.silu(gate) * value)

    torch.manual_seed(3)
    torch_mlp, flax_mlp = TorchMLP(), FlaxMLP(nnx.Rngs(0))
    load_flax(flax_mlp, convert(torch_state(torch_mlp), src="ref", dst="flax", cfg=cfg, component="gating_mlp"))
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    with torch.no_grad():
        want = torch_mlp(to_torch(x))
    with jax.default_matmul_precision("highest"):
        got = flax_mlp(to_jax(x))
    assert_parity(want, got, component="gating_mlp", pair=("ref", "flax"), expected_dtype="float32")


# ----------------------------------------------------------------------------------------------------------------------
# kyutai legacy names, read by kyutai's own load hook


@pytest.mark.parametrize("weights_per_step", [0, 3])
def test_legacy_split_matches_kyutais_own_load_hook(weights_per_step):
    """kyutai's `_load_hook` reads legacy fused weights; our normalization must read them the same way."""
    from moshi.modules.transformer import StreamingMultiheadAttention

    cfg = make_cfg(flexible=weights_per_step > 0, rope="norope")
    modern = random_state("kyutai", "attention", cfg)
    attn = StreamingMultiheadAttention(embed_dim=16, num_heads=4, causal=True, weights_per_step=weights_per_step)
    attn.load_state_dict({k: to_torch(v) for k, v in legacy(modern, cfg).items()})
    assert_bit_equal(torch_state(attn), modern)


# ----------------------------------------------------------------------------------------------------------------------
# Module IO and arrays, through torch and jax themselves


def tiny_torch(dtype):
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3, bias=False, dtype=dtype)
            self.weight = torch.nn.Parameter(torch.randn(3, dtype=dtype))

    return Tiny()


def tiny_flax(dtype):
    import jax.numpy as jnp
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 3, use_bias=False, param_dtype=dtype, rngs=rngs)
            self.weight = nnx.Param(jnp.ones((3,), dtype))
            self.count = nnx.BatchStat(jnp.zeros(()))  # not a Param: neither read nor loaded

    return Tiny(nnx.Rngs(0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_module_state_round_trip(dtype):
    import torch

    module = tiny_torch(getattr(torch, dtype))
    state = random_state("hf", "rmsnorm", make_cfg(), dtype)["weight"]
    new = {"lin.weight": np.full((3, 4), 0.5, DTYPES[dtype]), "weight": state[:3]}
    load_torch(module, new)
    assert_bit_equal(torch_state(module), new)
    assert module.lin.weight.dtype == getattr(torch, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flax_module_state_round_trip(dtype):
    import jax.numpy as jnp

    module = tiny_flax(getattr(jnp, dtype))
    assert sorted(flax_state(module)) == ["lin.kernel", "weight"]
    assert flax_state(module)["lin.kernel"].shape == (4, 3)
    new = {"lin.kernel": np.full((4, 3), 0.25, DTYPES[dtype]), "weight": np.arange(3).astype(DTYPES[dtype])}
    load_flax(module, new)
    assert_bit_equal(flax_state(module), new)
    assert module.lin.kernel[...].dtype == DTYPES[dtype]


@pytest.mark.parametrize("kind", ["torch", "flax"])
def test_module_load_lists_every_problem_and_never_casts(kind):
    load, module, key = (
        (load_torch, tiny_torch(__import__("torch").float32), "lin.weight")
        if kind == "torch"
        else (load_flax, tiny_flax(np.float32), "lin.kernel")
    )
    before = torch_state(module) if kind == "torch" else flax_state(module)
    bad = {key: np.zeros((5, 5), np.float32), "extra": np.zeros(2, np.float32)}
    with pytest.raises(ConversionError, match=r"3 problem\(s\)") as err:
        load(module, bad)
    for fragment in (f"wrong shape {key}", "missing     weight: expected (3,)", "unexpected  extra"):
        assert fragment in str(err.value)
    cast = {k: v.astype(ml_dtypes.bfloat16) for k, v in before.items()}
    with pytest.raises(ConversionError, match=r"wrong dtype weight: module has float32, state has bfloat16"):
        load(module, cast)
    assert_bit_equal(torch_state(module) if kind == "torch" else flax_state(module), before)  # nothing written


def test_arrays_move_every_bfloat16_bit_pattern():
    import torch

    bits = np.arange(-(2**15), 2**15, dtype=np.int16)
    bf16 = bits.view(ml_dtypes.bfloat16)
    tensor = torch.from_numpy(bits.copy()).view(torch.bfloat16)
    assert np.array_equal(from_torch(tensor).view(np.int16), bits)
    assert torch.equal(to_torch(bf16).view(torch.int16), tensor.view(torch.int16))
    assert np.array_equal(from_jax(to_jax(bf16)).view(np.int16), bits)
    assert from_torch(tensor).dtype == ml_dtypes.bfloat16 and from_jax(to_jax(bf16)).dtype == ml_dtypes.bfloat16


def test_arrays_copy_and_refuse_silent_casts():
    import jax
    import torch

    tensor = torch.zeros(3)
    array = from_torch(tensor)
    tensor.add_(1.0)
    assert array.tolist() == [0.0, 0.0, 0.0]
    if not jax.config.jax_enable_x64:
        with pytest.raises(TypeError, match="float64 array as float32"):
            to_jax(np.zeros(2))
