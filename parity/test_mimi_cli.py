"""The conversion CLI on Mimi checkpoints (kyutai's released file is a plain safetensors of `MimiModel.state_dict()`,
`_initialized` flags included): kyutai -> flax through `python -m converters` and `models_flax.mimi.from_checkpoint`
encodes to kyutai's codes and decodes to its audio; kyutai <-> ref <-> kyutai round trips are bit-exact; the config
picks the component (Mimi presets, kyutai's get_mimi config dict, our record) and a checkpoint of the other component
is named as such; an untrained kyutai Mimi is refused by its `_initialized` key; key problems are named; OUT is written
as the LM's (record, upstream config.json, progress bars, nothing left on failure).

Weights: a tiny kyutai Mimi (`MimiConfig.tiny()`) randomised by the harness (codebooks calibrated on the residuals
they quantize, so codes are diverse). One subprocess (the module entry point); the rest runs in process.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax import lax
from safetensors.numpy import save_file

import converters
import models_flax
import models_flax.mimi
from converters import convert, expected_shapes
from converters.checkpoint import load_orbax, read_safetensors_index
from converters.cli import main
from converters.inputs import read_config
from converters.mimi_config import (
    from_kyutai_mimi_config,
    mimi_config_from_dict,
    mimi_config_to_dict,
    to_kyutai_mimi_config,
)
from moshi_spec import MimiConfig
from parity.harness import strategies
from parity.harness.codes import assert_codes
from parity.harness.compare import assert_parity
from parity.harness.converter_cases import assert_bit_equal
from parity.harness.mimi import kyutai_config, quantizer_tables, randomize_mimi
from parity.test_lm_converters import kyutai_state as lm_state
from parity.test_lm_converters import leftovers

os.environ.setdefault("NO_TORCH_COMPILE", "1")
CFG = MimiConfig.tiny()
FRAMES = 8
NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"  # kyutai's released Mimi file


def kyutai_mimi(initialized: bool = True) -> torch.nn.Module:
    from moshi.models import loaders

    model = loaders.get_mimi(None, kyutai_config(CFG), num_codebooks=CFG.num_codebooks)
    if initialized:
        randomize_mimi(model, 0, CFG)
    return model.eval()


@cache
def kyutai_state() -> dict[str, np.ndarray]:
    return converters.torch_state(kyutai_mimi())


def write(tmp_path: Path, state: dict, name: str = NAME) -> Path:
    path = tmp_path / name
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def cli(src: str, dst: str, inp: Path, out: Path, *extra: str, preset: str | None = "mimi_tiny") -> int:
    """`python -m converters` in process; returns its exit status."""
    return main(["--no-progress", "--src", src, "--dst", dst, *(["--preset", preset] if preset else []), *extra,
                 str(inp), str(out)])  # fmt: skip


def test_presets_and_config_files_name_the_component(tmp_path):
    from moshi.models import loaders

    assert from_kyutai_mimi_config(loaders._mimi_config) == MimiConfig.mimi()
    assert to_kyutai_mimi_config(MimiConfig.mimi()) == loaders._mimi_config  # kyutai's own layout, key for key
    assert to_kyutai_mimi_config(CFG) == kyutai_config(CFG) and from_kyutai_mimi_config(kyutai_config(CFG)) == CFG
    assert mimi_config_from_dict(json.loads(json.dumps(mimi_config_to_dict(CFG)))) == CFG
    for name, content in (("kyutai.json", kyutai_config(CFG)), ("ours.json", mimi_config_to_dict(CFG))):
        (tmp_path / name).write_text(json.dumps(content))
        assert read_config(tmp_path / name)[0] == CFG
    src = write(tmp_path, kyutai_state())
    assert cli("kyutai", "ref", src, tmp_path / "o", "--config", str(tmp_path / "kyutai.json"), preset=None) == 0
    record = json.loads((tmp_path / "o" / "moshi_parity_config.json").read_text())
    assert record["component"] == "mimi" and "lm_config" not in record
    assert mimi_config_from_dict(record["mimi_config"]) == CFG


def test_config_file_errors_name_its_keys(tmp_path, capsys):
    src = write(tmp_path, kyutai_state())
    base = kyutai_config(CFG)
    for name, change, said in (
        ("pad.json", {"seanet": base["seanet"] | {"pad_mode": "reflect"}}, "seanet.pad_mode"),
        ("dim.json", {"transformer": base["transformer"] | {"d_model": "16"}}, "transformer.d_model='16' is not"),
        ("heads.json", {"transformer": base["transformer"] | {"num_heads": 3}}, "transformer.num_heads (dim 16"),
        ("norm.json", {"transformer": base["transformer"] | {"norm": "rms_norm"}}, "transformer.norm='rms_norm'"),
        ("n_q.json", {"quantizer": base["quantizer"] | {"n_q": 1}}, "quantizer.n_q (n_q 1 must exceed"),
        ("key.json", {"seanet": base["seanet"] | {"lstm": 2}}, "seanet.lstm: unknown key"),
    ):  # fmt: skip
        (tmp_path / name).write_text(json.dumps(base | change))
        assert cli("kyutai", "flax", src, tmp_path / "o", "--config", str(tmp_path / name), preset=None) == 1, name
        err = capsys.readouterr().err
        assert f"{tmp_path / name}: kyutai Mimi config" in err and said in err, err
        assert not (tmp_path / "o").exists()


def test_kyutai_to_flax_encodes_and_decodes_as_kyutai(tmp_path, capsys):
    out = tmp_path / "mimi-flax"
    args = ["--src", "kyutai", "--dst", "flax", "--preset", "mimi_tiny"]  # progress bars on
    assert main([*args, str(write(tmp_path, kyutai_state())), str(out)]) == 0
    captured = capsys.readouterr()
    n = len(expected_shapes("flax", "mimi", CFG))
    assert f"converted kyutai -> flax: {n} keys" in captured.out and "config: preset mimi_tiny (Mimi)" in captured.out
    assert "convert kyutai->flax" in captured.err and "save params/ (Orbax, bytes on disk)" in captured.err
    record = json.loads((out / "moshi_parity_config.json").read_text())
    assert record["format"] == "flax" and record["component"] == "mimi" and record["files"] == ["params"]
    expected = convert(kyutai_state(), src="kyutai", dst="flax", cfg=CFG, component="mimi")
    assert_bit_equal(load_orbax(out / "params"), expected)

    flax = models_flax.mimi.from_checkpoint(out, precision=lax.Precision.HIGHEST)
    assert isinstance(flax, models_flax.mimi.MimiModel) and flax.cfg == CFG
    assert_bit_equal(converters.flax_state(flax), expected)
    source = kyutai_mimi()
    audio = strategies.audio("noise", CFG, frames=FRAMES, batch=2)
    with torch.no_grad():
        want = source.encode(torch.from_numpy(audio)).numpy()
        want_latent = source._encode_to_unquantized_latent(torch.from_numpy(audio)).numpy()
    graph, weights = nnx.split(flax)  # jitted: a few times faster than eager on CPU
    codes, taps = jax.jit(lambda w, x: nnx.merge(graph, w).encode(x, capture=True))(weights, jnp.asarray(audio))
    codes = np.asarray(codes, np.int64)
    assert codes.shape == (2, CFG.num_codebooks, FRAMES) and len(np.unique(codes)) > 4
    ref_state = convert(kyutai_state(), src="kyutai", dst="ref", cfg=CFG, component="mimi")
    agreement = assert_codes(want, codes, pair=("kyutai", "flax"), dtype="float32", ref_latent=want_latent,
                             cand_latent=np.asarray(taps["latent"]),
                             quantizers=quantizer_tables(ref_state, CFG))  # fmt: skip
    assert agreement.agreement == 1.0  # measured: every code equal on the tiny preset
    with torch.no_grad():
        want_audio = source.decode(torch.from_numpy(want)).numpy()
    got_audio = jax.jit(lambda w, c: nnx.merge(graph, w).decode(c))(weights, jnp.asarray(want))
    assert_parity(want_audio, np.asarray(got_audio), component="mimi_audio",
                  pair=("kyutai", "flax"), expected_dtype="float32")  # fmt: skip


def test_ref_and_kyutai_round_trip_bit_exact(tmp_path, capsys):
    from moshi.models import loaders

    state = kyutai_state()
    assert cli("kyutai", "ref", write(tmp_path, state), tmp_path / "ref") == 0
    ref = {k: i.load() for k, i in read_safetensors_index(tmp_path / "ref" / "model.safetensors")[0].items()}
    assert_bit_equal(ref, convert(state, src="kyutai", dst="ref", cfg=CFG, component="mimi"))
    assert cli("ref", "flax", tmp_path / "ref", tmp_path / "flax", preset=None) == 0  # config: ref OUT's record
    assert cli("flax", "kyutai", tmp_path / "flax", tmp_path / "kyutai", preset=None) == 0
    out = capsys.readouterr().out
    assert "config.json (kyutai get_mimi config)" in out and "config: mimi_config of" in out
    back = tmp_path / "kyutai"
    index, meta = read_safetensors_index(back / "model.safetensors")
    assert meta == {"format": "pt"}
    assert_bit_equal({k: i.load() for k, i in index.items()}, state)  # `_initialized` written back as 1.0
    written = json.loads((back / "config.json").read_text())
    assert written == kyutai_config(CFG)
    loaded = loaders.get_mimi(back / "model.safetensors", written, num_codebooks=CFG.num_codebooks)  # kyutai's loader
    assert_bit_equal(converters.torch_state(loaded), state)
    assert cli("kyutai", "ref", back, tmp_path / "ref2", preset=None) == 0  # config: the kyutai OUT's record
    ref2 = {k: i.load() for k, i in read_safetensors_index(tmp_path / "ref2" / "model.safetensors")[0].items()}
    assert_bit_equal(ref2, ref)


def test_a_checkpoint_of_the_other_component_is_named(tmp_path, capsys):
    mimi, lm = write(tmp_path, kyutai_state()), write(tmp_path, lm_state(), "model.safetensors")
    assert cli("kyutai", "flax", mimi, tmp_path / "o", preset="tiny") == 1
    err = capsys.readouterr().err
    assert (
        f"{mimi}: its keys look like a kyutai Mimi checkpoint, not a Moshi LM: 90 of its 90 keys are kyutai Mimi "
        "names, 0 are Moshi LM names (pass a Mimi --preset (mimi, mimi_tiny) or a Mimi --config)" in err
    ), err
    assert "missing" not in err
    assert cli("kyutai", "flax", lm, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert f"{lm}: its keys look like a kyutai Moshi LM checkpoint, not a Mimi: 71 of its 71 keys" in err, err
    assert "(pass a Moshi LM --preset (tiny, small, moshi_7b) or a Moshi LM --config)" in err
    assert cli("ref", "flax", mimi, tmp_path / "o") == 1  # the right component, another format
    assert "its keys look like a kyutai checkpoint, not ref" in capsys.readouterr().err
    assert cli("kyutai", "ref", lm, tmp_path / "lm-ref", preset="tiny") == 0
    assert cli("ref", "flax", tmp_path / "lm-ref", tmp_path / "o") == 1  # an OUT of ours: its record says
    assert "says it holds a Moshi LM checkpoint, not a Mimi" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []
    assert cli("kyutai", "flax", mimi, tmp_path / "o", preset="moshi") == 2
    assert "unknown preset 'moshi'; known: Moshi LM: tiny, small, moshi_7b; Mimi: mimi, mimi_tiny" in (
        capsys.readouterr().err
    )


def test_from_checkpoint_refuses_the_other_component(tmp_path):
    assert cli("kyutai", "flax", write(tmp_path, lm_state(), "lm.safetensors"), tmp_path / "lm", preset="tiny") == 0
    assert cli("kyutai", "flax", write(tmp_path, kyutai_state()), tmp_path / "mimi") == 0
    with pytest.raises(ValueError, match=r"holds a Moshi LM checkpoint .* load it with models_flax.from_checkpoint"):
        models_flax.mimi.from_checkpoint(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"holds a Mimi checkpoint .* load it with models_flax.mimi.from_checkpoint"):
        models_flax.from_checkpoint(tmp_path / "mimi")
    with pytest.raises(FileNotFoundError, match="it holds a safetensors file of 90 tensors"):
        models_flax.mimi.from_checkpoint(tmp_path / NAME)


def test_an_untrained_kyutai_mimi_is_refused_by_its_flag(tmp_path, capsys):
    fresh = write(tmp_path, converters.torch_state(kyutai_mimi(initialized=False)), "fresh.safetensors")
    out = tmp_path / "out"
    assert cli("kyutai", "flax", fresh, out) == 1
    err = capsys.readouterr().err
    assert str(fresh) in err and "quantizer.rvq_first.vq.layers.0._codebook._initialized" in err
    assert "codebook never initialized: _initialized is [0.0], expected [1.0]" in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_bad_keys_are_named_and_leave_nothing(tmp_path, capsys, problem):
    state = dict(kyutai_state())
    key = {
        "missing": "quantizer.rvq_rest.vq.layers.2._codebook._initialized",
        "extra": "quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum",
        "shape": "encoder_transformer.transformer.layers.1.linear1.weight",
    }[problem]
    if problem == "missing":
        del state[key]
    else:
        state[key] = np.zeros((16, 8) if problem == "extra" else (32, 15), np.float32)
    out = tmp_path / "out"
    assert cli("kyutai", "flax", write(tmp_path, state), out) == 1
    err = capsys.readouterr().err
    said = {
        "missing": f"missing     {key}: expected (1,), got nothing",
        "extra": f"unexpected  {key}: expected nothing, got (16, 8)",
        "shape": f"wrong shape {key}: expected (32, 16), got (32, 15)",
    }[problem]
    assert said in err and "1 problem(s)" in err, err
    if problem == "extra":
        assert "IN does not look like this config: 4 numbered entries under quantizer.rvq_rest.vq.layers.* where " \
            "the config has 3" in err  # fmt: skip
    assert not out.exists() and leftovers(tmp_path) == []


def test_real_size_preset_against_a_tiny_file_says_how_it_differs(tmp_path, capsys):
    assert cli("kyutai", "flax", write(tmp_path, kyutai_state()), tmp_path / "o", preset="mimi") == 1
    err = capsys.readouterr().err
    assert "wrong shape encoder.model.0.conv.conv.weight: expected (64, 1, 7), got (4, 1, 7)" in err
    assert "2 numbered entries under encoder_transformer.transformer.layers.* where the config has 8" in err
    assert "3 numbered entries under quantizer.rvq_rest.vq.layers.* where the config has 31" in err


def test_dtype_cast_and_nonfinite_weights(tmp_path, capsys):
    state = dict(kyutai_state())
    assert cli("kyutai", "flax", write(tmp_path, state), tmp_path / "bf", "--dtype", "bfloat16") == 0
    bf = models_flax.mimi.from_checkpoint(tmp_path / "bf")
    assert {str(v.dtype) for v in converters.flax_state(bf).values()} == {"bfloat16"}
    nan = state | {"decoder.model.0.conv.conv.bias": np.full(16, np.nan, np.float32)}
    assert cli("kyutai", "flax", write(tmp_path, nan, "nan.safetensors"), tmp_path / "nan") == 1
    assert "decoder.model.0.conv.conv.bias: 16 NaN, 0 Inf of 16 values" in capsys.readouterr().err
