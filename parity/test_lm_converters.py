"""Whole-LM conversion: real kyutai LMModel weights through safetensors, the CLI (in process and as `python -m
converters`), Orbax and `from_checkpoint`; bit-exact round trips over every format in fp32 and bf16; released
checkpoints' legacy fused names; the 7B key/shape set checked without allocating weights; strict accounting naming
every bad key; atomic output (a failed conversion leaves neither OUT nor its temp dir); LM config file detection.
"""

from __future__ import annotations

import itertools
import json
import os
import tracemalloc
from functools import cache
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from jax import lax
from safetensors.numpy import save_file

import converters
from converters import (
    ConversionError,
    config_kind,
    convert,
    convert_shapes,
    expected_shapes,
    from_hf_config,
    from_kyutai_kwargs,
    lm_config_from_dict,
    lm_config_to_dict,
    validate_shapes,
)
from converters import cli as cli_module
from converters.checkpoint import load_orbax, read_safetensors_index, safetensors_shapes, save_safetensors
from converters.cli import main
from models_flax.checkpoint import from_checkpoint
from models_flax.lm import LM as FlaxLM
from models_ref.lm import LM as RefLM
from moshi_spec import LMConfig
from parity.harness.adapters import kyutai
from parity.harness.adapters.base import randomize_, torch_dtype
from parity.harness.converter_cases import DTYPES, assert_bit_equal, legacy

os.environ.setdefault("NO_TORCH_COMPILE", "1")
CFG = LMConfig.tiny()
PARAMS_7B = 7_687_729_152
STACKS = {"transformer.layers.": "temporal", "depformer.layers.": "depth"}


def kyutai_lm(dtype: str = "float32") -> torch.nn.Module:
    from moshi.models.lm import LMModel

    kwargs = dict(delays=[0, 0, 1, 1, 1, 0, 1, 1, 1], n_q=8, dep_q=4, card=32, text_card=48, dim=32, num_heads=4,
                  num_layers=2, hidden_scale=1.5, norm="rms_norm_f32", context=8, max_period=10000, gating="silu",
                  positional_embedding="rope", causal=True, depformer_dim=16, depformer_dim_feedforward=24,
                  depformer_num_heads=2, depformer_num_layers=2, depformer_multi_linear=True,
                  depformer_weights_per_step=True, depformer_pos_emb="none", existing_text_padding_id=3)  # fmt: skip
    assert from_kyutai_kwargs(kwargs) == CFG
    return LMModel(**kwargs).to(torch_dtype(dtype))


@cache
def kyutai_state(dtype: str = "float32") -> dict[str, np.ndarray]:
    model = kyutai_lm(dtype)
    randomize_(model, seed=0)
    return converters.torch_state(model)


def legacy_lm(state: dict) -> dict:
    """The released checkpoints' names: each stack's per-codebook attention projections fused step-major."""
    out = {k: v for k, v in state.items() if not k.startswith(tuple(STACKS))}
    for prefix, stack in STACKS.items():
        out |= legacy({k: v for k, v in state.items() if k.startswith(prefix)}, getattr(CFG, stack))
    return out


def hf_tiny_config():
    from transformers import MimiConfig, MoshiConfig

    return MoshiConfig.from_audio_encoder_config(
        MimiConfig(codebook_size=CFG.card), hidden_size=32, num_attention_heads=4, num_hidden_layers=2, ffn_dim=64,
        vocab_size=48, num_codebooks=4, sliding_window=8,
        depth_decoder_config={"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2, "ffn_dim": 32},
    )  # fmt: skip


def hf_shapes(config) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the real HF MoshiForConditionalGeneration (built on the meta device), Mimi left out."""
    from transformers import MoshiForConditionalGeneration

    with torch.device("meta"):
        model = MoshiForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("audio_encoder.")}


def write_kyutai(tmp_path: Path, state: dict, name: str = "kyutai.safetensors") -> Path:
    path = tmp_path / name
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def cli(src: str, dst: str, inp: Path, out: Path, *extra: str, preset: str | None = "tiny") -> int:
    """`python -m converters` in process; returns its exit status."""
    return main(["--no-progress", "--src", src, "--dst", dst, *(["--preset", preset] if preset else []), *extra,
                 str(inp), str(out)])  # fmt: skip


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ----------------------------------------------------------------------------------------------------------------------
# Layouts, round trips, legacy names


def test_expected_layouts_are_the_real_modules():
    assert {k: v.shape for k, v in kyutai_state().items()} == expected_shapes("kyutai", "lm", CFG)
    assert hf_shapes(hf_tiny_config()) == expected_shapes("hf", "lm", CFG)
    assert {k: tuple(v.shape) for k, v in RefLM(CFG).state_dict().items()} == expected_shapes("ref", "lm", CFG)
    flax = nnx.eval_shape(lambda: FlaxLM(CFG, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(flax, nnx.Param))
    assert {".".join(map(str, p)): v.get_value().shape for p, v in flat} == expected_shapes("flax", "lm", CFG)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_through_every_format_is_bit_exact(dtype):
    state = kyutai_state(dtype)
    chain, current = ["kyutai", "hf", "ref", "flax", "ref", "hf", "kyutai"], state
    seen = {}
    for src, dst in itertools.pairwise(chain):
        current = convert(current, src=src, dst=dst, cfg=CFG, component="lm")
        assert {v.dtype for v in current.values()} == {DTYPES[dtype]}, (src, dst)
        if dst in seen:
            assert_bit_equal(current, seen[dst])
        seen[dst] = current
    assert_bit_equal(current, state)
    assert converters.find_path("kyutai", "flax", "lm") == ["kyutai", "hf", "ref", "flax"]
    direct = convert(state, src="kyutai", dst="flax", cfg=CFG, component="lm")  # shortest path
    assert_bit_equal(direct, seen["flax"])  # same bits
    ref = RefLM(CFG, dtype=torch_dtype(dtype))
    converters.load_torch(ref, seen["ref"])  # strict: every key, shape and dtype of the real module
    flax = FlaxLM(CFG, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    converters.load_flax(flax, seen["flax"])


def test_top_level_keys_land_where_upstream_puts_them():
    """The kyutai -> hf key map of /work/shared/UPSTREAM.md, written out by hand (independent of the tables)."""
    k = kyutai_state()
    hf, flax = (convert(k, src="kyutai", dst=fmt, cfg=CFG, component="lm") for fmt in ("hf", "flax"))
    same = np.testing.assert_array_equal
    for c in range(CFG.dep_q):
        same(hf["depth_decoder.input_projections.weight"][c], k[f"depformer_in.{c}.weight"])
        same(hf["depth_decoder.lm_heads.weight"][c], k[f"linears.{c}.weight"])
        same(flax["depth.input_projections.kernel"][c], k[f"depformer_in.{c}.weight"].T)
        same(flax["depth.lm_heads.kernel"][c], k[f"linears.{c}.weight"].T)
    for i in range(CFG.n_q):
        same(hf[f"embed_tokens.{i}.weight"], k[f"emb.{i}.weight"])
        same(flax[f"embed_tokens.{i}.weight"], k[f"emb.{i}.weight"])
    for c in range(CFG.dep_q - 1):
        same(flax[f"depth.embed_tokens.{c}.weight"], k[f"depformer_emb.{c}.weight"])
    same(hf["decoder.model.embed_tokens.weight"], k["text_emb.weight"])
    same(flax["depth.text_embed_tokens.weight"], k["depformer_text_emb.weight"])
    same(flax["norm.weight"], k["out_norm.alpha"].reshape(-1))
    same(flax["lm_head.kernel"], k["text_linear.weight"].T)
    same(hf["depth_decoder.layers.1.mlp.fc2.weight"][3], k["depformer.layers.1.gating.3.linear_out.weight"])
    same(flax["layers.1.post_attention_layernorm.weight"], k["transformer.layers.1.norm2.alpha"].reshape(-1))


def test_legacy_fused_names_give_the_same_params():
    state = kyutai_state()
    old = legacy_lm(state)
    assert (
        "depformer.layers.1.self_attn.in_proj_weight" in old and "transformer.layers.0.self_attn.out_proj.weight" in old
    )
    assert old["depformer.layers.0.self_attn.in_proj_weight"].shape == (4 * 48, 16)
    model = kyutai_lm()
    model.load_state_dict({k: converters.to_torch(v) for k, v in old.items()})  # kyutai's own legacy loader agrees
    assert_bit_equal(converters.torch_state(model), state)
    assert_bit_equal(
        convert(old, src="kyutai", dst="flax", cfg=CFG, component="lm"),
        convert(state, src="kyutai", dst="flax", cfg=CFG, component="lm"),
    )
    assert_bit_equal(convert(old, src="kyutai", dst="kyutai", cfg=CFG, component="lm"), state)
    calls = []
    convert(old, src="kyutai", dst="flax", cfg=CFG, component="lm", progress=calls.append)  # one call per block
    # blocks: the embeddings and heads, the final norm, each layer
    assert len(calls) == 2 + CFG.temporal.num_layers + CFG.depth.num_layers and sum(calls) == len(state)


def test_errors_name_every_missing_extra_and_misshaped_key():
    state = dict(kyutai_state())
    del state["depformer_emb.2.weight"]
    state["transformer.layers.0.self_attn.in_projs.1.weight"] = np.zeros((96, 32), np.float32)
    state["linears.3.weight"] = np.zeros((32, 17), np.float32)
    state["out_norm.alpha"] = np.ones(32, np.float32)
    with pytest.raises(ConversionError) as err:
        convert(state, src="kyutai", dst="flax", cfg=CFG, component="lm")
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "missing     depformer_emb.2.weight: expected (33, 16)" in msg
    assert "unexpected  transformer.layers.0.self_attn.in_projs.1.weight: expected nothing, got (96, 32)" in msg
    assert "wrong shape linears.3.weight: expected (32, 16), got (32, 17)" in msg
    assert "wrong shape out_norm.alpha: expected (1, 1, 32), got (32,)" in msg
    hf = convert(kyutai_state(), src="kyutai", dst="hf", cfg=CFG, component="lm")
    with pytest.raises(ConversionError, match=r"unexpected  audio_encoder\.x"):
        mimi = {"audio_encoder.x": np.zeros(3, np.float32)}  # never silently dropped by the engine
        convert(hf | mimi, src="hf", dst="ref", cfg=CFG, component="lm")


# ----------------------------------------------------------------------------------------------------------------------
# 7B: every key and shape, no weights allocated


@cache
def kyutai_7b_shapes() -> dict[str, tuple[int, ...]]:
    from moshi.models import loaders
    from moshi.models.lm import LMModel

    with torch.device("meta"):
        model = LMModel(**loaders._lm_kwargs)
    assert from_kyutai_kwargs(loaders._lm_kwargs) == LMConfig.moshi_7b()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_7b_parameter_count_of_every_layout():
    cfg = LMConfig.moshi_7b()
    for fmt in ("kyutai", "hf", "ref", "flax"):
        assert sum(int(np.prod(s)) for s in expected_shapes(fmt, "lm", cfg).values()) == PARAMS_7B, fmt


def test_7b_shapes_validate_and_convert_without_allocating():
    from transformers import MimiConfig, MoshiConfig

    cfg, kyutai = LMConfig.moshi_7b(), kyutai_7b_shapes()
    hf_config = MoshiConfig.from_audio_encoder_config(MimiConfig())  # HF's defaults are the 7B
    assert from_hf_config(hf_config.to_dict()) == cfg
    hf = hf_shapes(hf_config)
    assert kyutai == expected_shapes("kyutai", "lm", cfg) and hf == expected_shapes("hf", "lm", cfg)
    fused = legacy_7b(kyutai, cfg)
    tracemalloc.start()
    try:
        assert validate_shapes(kyutai, fmt="kyutai", cfg=cfg, component="lm") == kyutai
        # released checkpoints' legacy names
        assert validate_shapes(fused, fmt="kyutai", cfg=cfg, component="lm") == kyutai
        assert convert_shapes(fused, src="kyutai", dst="hf", cfg=cfg, component="lm") == hf
        assert convert_shapes(hf, src="hf", dst="flax", cfg=cfg, component="lm") == expected_shapes("flax", "lm", cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"shape-only checks allocated {peak / 2**20:.0f} MiB"
    bad = dict(hf) | {"decoder.model.layers.31.mlp.fc2.weight": (4096, 11265)}
    del bad["depth_decoder.lm_heads.weight"]
    with pytest.raises(ConversionError) as err:
        validate_shapes(bad, fmt="hf", cfg=cfg, component="lm")
    assert "wrong shape decoder.model.layers.31.mlp.fc2.weight: expected (4096, 11264), got (4096, 11265)" in str(
        err.value
    )
    assert "missing     depth_decoder.lm_heads.weight: expected (8, 2048, 1024)" in str(err.value)


def legacy_7b(shapes: dict, cfg: LMConfig) -> dict:
    out = {}
    for key, shape in shapes.items():
        stack = next((getattr(cfg, s) for p, s in STACKS.items() if key.startswith(p)), None)
        for new, old in (
            ("self_attn.in_projs.", "self_attn.in_proj_weight"),
            ("self_attn.out_projs.", "self_attn.out_proj.weight"),
        ):
            if stack is not None and new in key:
                key, shape = key[: key.index(new)] + old, (shape[0] * stack.weight_sets, shape[1])
        out[key] = shape
    return out


# ----------------------------------------------------------------------------------------------------------------------
# CLI, checkpoint files, from_checkpoint


@pytest.mark.parametrize("dtype", DTYPES)
def test_cli_kyutai_to_flax_then_from_checkpoint(tmp_path, capsys, dtype):
    state = kyutai_state(dtype)
    out = tmp_path / "flax"
    assert cli("kyutai", "flax", write_kyutai(tmp_path, legacy_lm(state)), out) == 0  # released checkpoints' names
    assert "converted kyutai -> flax: 49 keys, 46,912 parameters" in capsys.readouterr().out
    record = json.loads((out / "moshi_parity_config.json").read_text())
    assert record["format"] == "flax" and record["src_format"] == "kyutai" and record["version"]
    assert lm_config_from_dict(record["lm_config"]) == CFG
    expected = convert(state, src="kyutai", dst="flax", cfg=CFG, component="lm")
    assert_bit_equal(load_orbax(out / "params"), expected)
    lm = from_checkpoint(out, precision=lax.Precision.HIGHEST)
    assert_bit_equal(converters.flax_state(lm), expected)
    direct = FlaxLM(CFG, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), precision=lax.Precision.HIGHEST,
                    rngs=nnx.Rngs(1))  # fmt: skip
    converters.load_flax(direct, expected)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, CFG.card, (2, 1 + CFG.n_q, 6))
    codes[:, 0] = rng.integers(0, CFG.text_card, (2, 6))
    codes[rng.random(codes.shape) < 0.1] = -1  # kyutai's zero token
    codes = jnp.asarray(codes.astype(np.int32))
    got, want = lm(codes), direct(codes)
    assert got.text_logits.dtype == jnp.dtype(dtype)
    assert np.array_equal(np.asarray(got.audio_logits), np.asarray(want.audio_logits), equal_nan=True)
    assert np.array_equal(np.asarray(got.text_logits), np.asarray(want.text_logits), equal_nan=True)
    assert np.isfinite(np.asarray(got.text_logits)[np.asarray(got.text_mask)]).all()
    if dtype == "float32":
        bf16 = from_checkpoint(out, dtype=jnp.bfloat16)  # asked for: an explicit cast
        assert {v.dtype for v in converters.flax_state(bf16).values()} == {np.dtype(ml_dtypes.bfloat16)}


def test_cli_round_trip_through_files_and_dtype_cast(tmp_path, capsys):
    state = kyutai_state()
    src = write_kyutai(tmp_path, state)
    assert cli("kyutai", "flax", src, tmp_path / "flax") == 0
    # src flax: an OUT directory; its moshi_parity_config.json gives the config when none is passed
    assert cli("flax", "hf", tmp_path / "flax", tmp_path / "hf", preset=None) == 0
    index, meta = read_safetensors_index(tmp_path / "hf" / "model.safetensors")
    assert meta == {"format": "pt"}
    on_disk = safetensors_shapes(tmp_path / "hf")
    assert validate_shapes(on_disk, fmt="hf", cfg=CFG, component="lm") == expected_shapes("hf", "lm", CFG)
    hf = {k: info.load() for k, info in index.items()}
    assert_bit_equal(hf, convert(state, src="kyutai", dst="hf", cfg=CFG, component="lm"))
    assert cli("hf", "kyutai", tmp_path / "hf", tmp_path / "back") == 0
    from safetensors.torch import load_file

    model = kyutai_lm()  # loaded through upstream safetensors and torch: the file is standard
    model.load_state_dict(load_file(tmp_path / "back" / "model.safetensors"), strict=True)
    assert_bit_equal(converters.torch_state(model), state)
    assert cli("kyutai", "ref", src, tmp_path / "bf", "--dtype", "bfloat16") == 0
    bf = {k: i.load() for k, i in read_safetensors_index(tmp_path / "bf" / "model.safetensors")[0].items()}
    ref = convert(state, src="kyutai", dst="ref", cfg=CFG, component="lm")
    want = {k: v.astype(ml_dtypes.bfloat16) for k, v in ref.items()}
    assert_bit_equal(bf, want)
    assert "--dtype bfloat16" in capsys.readouterr().out


def test_cli_hf_source_ignores_mimi_explicitly_and_reads_shards(tmp_path, capsys):
    hf = convert(kyutai_state(), src="kyutai", dst="hf", cfg=CFG, component="lm")
    mimi = {f"audio_encoder.encoder.layers.{i}.conv.weight": np.ones((2, 3), np.float32) for i in range(10)}
    keys = sorted(hf | mimi)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        save_safetensors({k: (hf | mimi)[k] for k in part}, shards / f"model-{i:05d}-of-00002.safetensors")
    assert cli("hf", "flax", shards, tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "ignored 10 key(s) under ['audio_encoder.']: audio_encoder.encoder.layers.0.conv.weight" in out
    assert "(2 more)" in out
    assert json.loads((tmp_path / "o" / "moshi_parity_config.json").read_text())["ignored_keys"] == sorted(mimi)
    assert_bit_equal(load_orbax(tmp_path / "o" / "params"), convert(hf, src="hf", dst="flax", cfg=CFG, component="lm"))
    assert cli("hf", "flax", shards, tmp_path / "strict", "--ignore-prefix", "") == 1
    assert "unexpected  audio_encoder.encoder.layers.9.conv.weight" in capsys.readouterr().err
    save_safetensors({"decoder.lm_head.weight": hf["decoder.lm_head.weight"]}, shards / "z-duplicate.safetensors")
    assert cli("hf", "flax", shards, tmp_path / "d") == 1
    assert "decoder.lm_head.weight is in two shards" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_cli_bad_input_fails_naming_the_key_and_leaves_nothing(tmp_path, capsys, problem):
    state = dict(kyutai_state())
    key = {"missing": "depformer_in.3.weight", "extra": "depformer_in.4.weight", "shape": "text_emb.weight"}[problem]
    if problem == "missing":
        del state[key]
    else:
        state[key] = np.zeros((49 if problem == "shape" else 16, 31 if problem == "shape" else 32), np.float32)
    out = tmp_path / "out"
    assert cli("kyutai", "flax", write_kyutai(tmp_path, state), out) == 1
    err = capsys.readouterr().err
    assert key in err and {"missing": "missing", "extra": "unexpected", "shape": "wrong shape"}[problem] in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_failure_after_writing_started_removes_the_temp_dir_and_keeps_old_out(tmp_path, monkeypatch, capsys):
    src, out = write_kyutai(tmp_path, kyutai_state()), tmp_path / "out"

    def broken(state, fmt, directory, progress):
        (directory / "model.safetensors").write_bytes(b"partial")
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr(cli_module, "write", broken)
    assert cli("kyutai", "hf", src, out) == 1 and "disk full" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert cli("kyutai", "hf", src, out) == 0
    before = (out / "model.safetensors").read_bytes()
    assert cli("kyutai", "hf", src, out) == 1 and "exists (pass --overwrite" in capsys.readouterr().err
    monkeypatch.setattr(cli_module, "write", broken)
    assert cli("kyutai", "hf", src, out, "--overwrite") == 1
    assert (out / "model.safetensors").read_bytes() == before and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert cli("kyutai", "ref", src, out, "--overwrite") == 0 and leftovers(tmp_path) == []
    assert json.loads((out / "moshi_parity_config.json").read_text())["format"] == "ref"


# ----------------------------------------------------------------------------------------------------------------------
# LM config files


def test_config_files_are_detected(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    kyutai_kwargs, hf = kyutai.lm_kwargs(CFG), hf_tiny_config().to_dict()
    assert config_kind(kyutai_kwargs) == "kyutai" and config_kind(hf) == "hf"
    assert from_kyutai_kwargs(kyutai_kwargs) == CFG and from_hf_config(hf) == CFG
    assert lm_config_from_dict(json.loads(json.dumps(lm_config_to_dict(CFG)))) == CFG
    for name, content in (("kyutai.json", kyutai_kwargs), ("config.json", hf), ("ours.json", lm_config_to_dict(CFG))):
        (tmp_path / name).write_text(json.dumps(content))
        out = tmp_path / f"out-{name}"
        assert cli("kyutai", "ref", src, out, "--config", str(tmp_path / name), preset=None) == 0
        assert lm_config_from_dict(json.loads((out / "moshi_parity_config.json").read_text())["lm_config"]) == CFG
    assert "config: hf config" in capsys.readouterr().out
    for garbage, message in (
        ({"foo": 1, "bar": [2]}, "cannot tell which LM config this is (none matches)"),
        ([1, 2], "must be an object, got list"),
        (kyutai_kwargs | {"depth_decoder_config": {}}, "ambiguous: kyutai, hf"),
        (kyutai_kwargs | {"quantize": True, "bogus": 1}, "quantize=True is not supported"),
        (kyutai_kwargs | {"bogus": 1}, "unknown key 'bogus'"),
        ({k: v for k, v in kyutai_kwargs.items() if k != "depformer_num_heads"}, "'depformer_num_heads'"),
        (hf | {"depth_decoder_config": hf["depth_decoder_config"] | {"num_codebooks": 3}}, "num_codebooks=3"),
    ):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(garbage))
        assert cli("kyutai", "ref", src, tmp_path / "x", "--config", str(path), preset=None) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    path.write_text("{not json")
    assert cli("kyutai", "ref", src, tmp_path / "x", "--config", str(path), preset=None) == 1
    assert "not JSON" in capsys.readouterr().err
