"""The conversion CLI on bad input (issue "Hardening", conversion CLI): every class of mistake is refused before a
weight is read or before OUT appears, with the file, the key as the file spells it, and expected vs got; exit status
1 for input and conversion errors, 2 for usage errors; nothing half-written, IN never touched.

Classes: OUT is IN / inside IN / contains IN; OUT is a file or a foreign directory; safetensors headers that do not fit
their file; integer, float16/float64, mixed and non-finite weights (at conversion and in from_checkpoint); legacy names
reported as written; IN of another format than --src; from_checkpoint on a directory of another kind; config files
with wrong types or sizes kyutai cannot build, named by their own keys.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from converters import ConversionError, convert, lm_config_to_dict
from converters.checkpoint import read_safetensors_index, save_orbax
from models_flax.checkpoint import from_checkpoint
from parity.harness.adapters import kyutai
from parity.test_lm_converters import CFG, cli, hf_tiny_config, kyutai_state, leftovers, legacy_lm, write_kyutai


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def tree(path: Path) -> dict[str, bytes]:
    """Every file under path (or path itself) with its bytes: what must not change."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------------
# OUT and IN


def test_out_that_is_in_lies_inside_it_or_contains_it_is_a_usage_error(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    shards = tmp_path / "shards"
    shards.mkdir()
    inner = write_kyutai(shards, kyutai_state(), "model.safetensors")
    (tmp_path / "link").symlink_to(src)
    before = tree(tmp_path)
    for inp, out, said in (
        (src, src, "the same path"),
        (src, tmp_path / "link", "the same path"),  # a symlink to IN
        (inner, shards, "lies inside OUT"),
        (shards, shards / "out", "lies inside IN"),
    ):
        assert cli("kyutai", "hf", inp, out, "--overwrite") == 2, (inp, out)
        assert said in capsys.readouterr().err
    assert tree(tmp_path) == before and leftovers(tmp_path) == []


def test_overwrite_replaces_a_file_or_an_earlier_out_never_a_foreign_directory(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    out = tmp_path / "out"
    out.write_text("an old file")
    assert cli("kyutai", "hf", src, out) == 1 and "exists (pass --overwrite" in capsys.readouterr().err
    assert cli("kyutai", "hf", src, out, "--overwrite") == 0  # main: rc 1, [Errno 20], OUT.old-PID left behind
    assert out.is_dir() and (out / "model.safetensors").is_file() and leftovers(tmp_path) == []
    assert cli("kyutai", "ref", src, out, "--overwrite") == 0 and leftovers(tmp_path) == []  # an earlier OUT
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    assert cli("kyutai", "hf", src, foreign, "--overwrite") == 1
    assert "a directory this tool did not write" in capsys.readouterr().err and tree(foreign) == {"cat.jpg": b"meow"}
    nan = kyutai_state() | {"text_emb.weight": np.full((49, 32), np.nan, np.float32)}  # fails while converting
    deep = tmp_path / "new" / "deeper" / "out"  # so the parents made for OUT are removed again
    assert cli("kyutai", "hf", write_kyutai(tmp_path, nan, "nan.safetensors"), deep) == 1
    assert not (tmp_path / "new").exists()
    assert cli("kyutai", "hf", src, deep) == 0 and (deep / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# safetensors files that do not fit their header


def test_truncated_safetensors_names_the_file_and_tensor_before_reading(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(src.read_bytes()[:-100])  # main: "mmap length is greater than file size", naming neither
    assert cli("kyutai", "flax", cut, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert str(cut) in err and "truncated" in err and "100 missing" in err
    last = max(read_safetensors_index(src)[0].values(), key=lambda info: info.end).key
    assert last in err and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


F32 = {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize(
    ("header", "size", "said"),
    [
        ({"a": F32 | {"data_offsets": [0, 8]}, "b": F32 | {"data_offsets": [8, 16]}}, 12, "lie past its end: b"),
        ({"a": F32 | {"data_offsets": [0, 8]}, "b": F32 | {"data_offsets": [4, 12]}}, 12, "b (bytes 4-12) overlaps a"),
        ({"a": F32 | {"data_offsets": [8, 16]}, "b": F32 | {"data_offsets": [0, 8]}}, 16, None),  # out of order: fine
        ({"a": F32 | {"data_offsets": [0, 8]}, "b": F32 | {"data_offsets": [12, 20]}}, 20, "bytes 8-12 before b"),
        ({"a": F32 | {"data_offsets": [0, 8]}}, 12, "4 bytes after the last tensor"),
        ({"a": F32 | {"data_offsets": [0, 12]}}, 12, "span 12 bytes, but [2] x F32 needs 8"),
        ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, 8, "'a' has shape ['2']"),
        ({"a": {"dtype": "F32", "shape": [2]}}, 8, "is not {dtype, shape, data_offsets}"),
        ({"a": F32 | {"data_offsets": [0, -8]}}, 8, "has data_offsets [0, -8]"),
    ],
    ids=["past-end", "overlap", "out-of-order", "gap", "trailing", "span", "shape", "entry", "offsets"],
)
def test_safetensors_headers_are_checked_against_the_file(tmp_path, header, size, said):
    path = raw_safetensors(tmp_path / "x.safetensors", header, bytes(size))
    if said is None:
        index, _ = read_safetensors_index(path)
        assert [index[k].offset - index["b"].offset for k in "ab"] == [8, 0]
        return
    with pytest.raises(ConversionError) as err:
        read_safetensors_index(path)
    assert str(path) in str(err.value) and said in str(err.value)


def test_safetensors_header_longer_than_the_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 4096) + b"{}")
    with pytest.raises(ConversionError, match="announce a header of 4096 bytes, the file has 10"):
        read_safetensors_index(path)


# ----------------------------------------------------------------------------------------------------------------------
# dtypes and values


def test_integer_and_other_width_weights_are_refused_by_name_unless_cast(tmp_path, capsys):
    state = kyutai_state()
    ints = write_kyutai(tmp_path, state | {"emb.0.weight": state["emb.0.weight"].astype(np.int32)}, "i.safetensors")
    assert cli("kyutai", "flax", ints, tmp_path / "o", "--dtype", "float32") == 1  # main: rc 0 or a rule's dtype mix
    assert "1 weight (emb.0.weight) is int32" in capsys.readouterr().err
    for name, dtype in (("half", np.float16), ("double", np.float64)):
        path = write_kyutai(tmp_path, {k: v.astype(dtype) for k, v in state.items()}, f"{name}.safetensors")
        assert cli("kyutai", "ref", path, tmp_path / name) == 1
        assert f"all 71 weights are {np.dtype(dtype)}" in capsys.readouterr().err and not (tmp_path / name).exists()
        assert cli("kyutai", "ref", path, tmp_path / name, "--dtype", "float32") == 0
        out = read_safetensors_index(tmp_path / name / "model.safetensors")[0]
        assert {info.dtype for info in out.values()} == {np.dtype(np.float32)}
    mixed = state | {"text_emb.weight": state["text_emb.weight"].astype(ml_dtypes.bfloat16)}
    assert cli("kyutai", "ref", write_kyutai(tmp_path, mixed, "mixed.safetensors"), tmp_path / "m") == 1
    assert "mixed dtypes float32 (70: " in capsys.readouterr().err


def test_non_finite_weights_are_refused_by_name(tmp_path, capsys):
    state = dict(kyutai_state())
    nan = state | {"text_linear.weight": state["text_linear.weight"].copy()}
    nan["text_linear.weight"][3, 5] = np.nan
    nan["text_linear.weight"][4, 0] = -np.inf
    assert cli("kyutai", "flax", write_kyutai(tmp_path, nan, "nan.safetensors"), tmp_path / "o") == 1  # main: rc 0
    assert "text_linear.weight: 1 NaN, 1 Inf of 1536 values, the first at (3, 5)" in capsys.readouterr().err
    big = {k: v.astype(np.float64) for k, v in state.items()}
    big["emb.2.weight"][0, 0] = 1e300  # finite in float64, not in float32
    assert (
        cli("kyutai", "hf", write_kyutai(tmp_path, big, "big.safetensors"), tmp_path / "o", "--dtype", "float32") == 1
    )
    err = capsys.readouterr().err
    assert "emb.2.weight: 0 NaN, 1 Inf" in err and "after the cast to float32 (finite as float64" in err
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def flax_out(path: Path, state: dict) -> Path:
    """A flax OUT made by hand (as by another tool): an Orbax checkpoint and a record."""
    path.mkdir()
    save_orbax(state, path / "params")
    record = {"format": "flax", "lm_config": lm_config_to_dict(CFG), "files": ["params"]}
    (path / "moshi_parity_config.json").write_text(json.dumps(record))
    return path


def test_from_checkpoint_checks_dtypes_and_values_of_a_checkpoint_it_did_not_see_written(tmp_path):
    flax = convert(kyutai_state(), src="kyutai", dst="flax", cfg=CFG, component="lm")
    half = flax_out(tmp_path / "half", {k: v.astype(np.float16) for k, v in flax.items()})
    with pytest.raises(ConversionError, match=r"all 49 weights are float16.*pass dtype=jnp.float32"):
        from_checkpoint(half)  # main: an unhelpful TypeError
    assert from_checkpoint(half, dtype=np.float32) is not None  # asked for: cast
    ints = flax_out(tmp_path / "ints", flax | {"norm.weight": np.ones(32, np.int32)})
    with pytest.raises(ConversionError, match=r"1 weight \(norm.weight\) is int32"):
        from_checkpoint(ints, dtype=np.float32)  # main: cast to float silently
    nan = flax_out(tmp_path / "nan", flax | {"norm.weight": np.full(32, np.nan, np.float32)})
    with pytest.raises(ConversionError, match=r"norm.weight: 32 NaN, 0 Inf of 32 values"):
        from_checkpoint(nan)  # main: loads, every logit NaN


# ----------------------------------------------------------------------------------------------------------------------
# names as the file writes them, formats, what a directory holds


def test_legacy_keys_are_reported_as_written(tmp_path, capsys):
    old = legacy_lm(kyutai_state())
    old["transformer.layers.0.self_attn.in_proj_weight"] = old["transformer.layers.0.self_attn.in_proj_weight"][:-1]
    old["depformer.layers.0.self_attn.in_proj_weight"] = old["depformer.layers.0.self_attn.in_proj_weight"][:, :-1]
    del old["depformer.layers.1.self_attn.out_proj.weight"]
    assert cli("kyutai", "hf", write_kyutai(tmp_path, old), tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err  # main: 5, four of them on made-up keys
    assert "wrong shape transformer.layers.0.self_attn.in_proj_weight: expected (96, 32), got (95, 32)" in err
    assert "wrong shape depformer.layers.0.self_attn.in_proj_weight: expected (192, 16), got (192, 15)" in err
    assert "missing     depformer.layers.1.self_attn.out_proj.weight: expected (64, 16)" in err
    assert "in_projs" not in err and "out_projs" not in err


def test_in_of_another_format_is_named(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    assert cli("kyutai", "hf", src, tmp_path / "hf") == 0
    assert cli("hf", "flax", src, tmp_path / "o") == 1  # main: 108 missing/unexpected keys, no hint
    err = capsys.readouterr().err
    assert (
        "look like a kyutai checkpoint, not hf: 71 of its 71 keys are kyutai names" in err and "unexpected" not in err
    )
    old = write_kyutai(tmp_path, legacy_lm(kyutai_state()), "legacy.safetensors")
    assert cli("hf", "flax", old, tmp_path / "o") == 1
    assert f"{old}: its keys look like a kyutai checkpoint" in capsys.readouterr().err  # old names count too
    for inp in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        assert cli("kyutai", "flax", inp, tmp_path / "o", preset=None) == 1
        assert "says it holds a hf checkpoint, not kyutai: pass --src hf" in capsys.readouterr().err


def test_in_that_contradicts_the_config_is_said_to(tmp_path, capsys):
    assert cli("kyutai", "hf", write_kyutai(tmp_path, kyutai_state()), tmp_path / "o", preset="moshi_7b") == 1
    err = capsys.readouterr().err  # main: 439 key problems, nothing more
    assert err.rstrip().endswith(
        "IN does not look like this config: 2 temporal layers under transformer.layers.* where the config has 32; "
        "2 depth layers under depformer.layers.* where the config has 6; text_emb.weight is (49, 32) where the config "
        "has (32001, 4096) (text_card + 1, temporal dim)"
    )


def test_from_checkpoint_says_what_a_directory_holds(tmp_path):
    src = write_kyutai(tmp_path, kyutai_state())
    assert cli("kyutai", "hf", src, tmp_path / "hf") == 0
    (tmp_path / "empty").mkdir()
    for path, holds in (
        (tmp_path / "hf", "a hf checkpoint written by moshi-parity converters (config.json, model.safetensors"),
        (tmp_path / "empty", "an empty directory"),
        (src, "a safetensors file of 71 tensors"),
        (tmp_path / "nothing", "nothing (no such file or directory)"),
    ):
        with pytest.raises(FileNotFoundError) as err:  # main: "params does not exist"
            from_checkpoint(path)
        assert f"it holds {holds}" in str(err.value) and "python -m converters --src" in str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# config files: their own keys, never derived shapes


def test_config_errors_name_the_fields_of_the_file(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    kw, hf, ours = kyutai.lm_kwargs(CFG), hf_tiny_config().to_dict(), lm_config_to_dict(CFG)
    depth = hf["depth_decoder_config"]
    for name, content, said in (
        ("heads.json", kw | {"depformer_num_heads": 3}, "depformer_num_heads=3 does not divide depformer_dim=16"),
        ("str.json", kw | {"dim": "64"}, "dim='64' is not a positive integer"),
        ("kv.json", kw | {"depformer_kv_repeat": 3}, "depformer_num_heads=2 is not a multiple of depformer_kv_repeat"),
        ("scale.json", kw | {"hidden_scale": 0.01}, "hidden_scale=0.01 leaves the gating of dim=32 no hidden units"),
        ("hf.json", hf | {"hidden_size": "32"}, "hidden_size='32' is not a positive integer"),
        ("hfkv.json", hf | {"depth_decoder_config": depth | {"num_key_value_heads": 3}},
         "depth_decoder_config.num_attention_heads=2 is not a multiple of depth_decoder_config.num_key_value_heads=3"),
        ("ours.json", ours | {"temporal": ours["temporal"] | {"dim": "64"}}, "temporal.dim='64' is not int"),
        ("ours2.json", ours | {"n_q": 8.0}, "n_q=8.0 is not int"),
    ):  # fmt: skip
        (tmp_path / name).write_text(json.dumps(content))
        assert cli("kyutai", "ref", src, tmp_path / "o", "--config", str(tmp_path / name), preset=None) == 1, name
        err = capsys.readouterr().err
        assert f"{tmp_path / name}: " in err and said in err, err
        assert "wrong shape" not in err and not (tmp_path / "o").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    assert cli("kyutai", "hf", src, tmp_path / "o", preset="huge") == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert cli("kyutai", "hf", src, tmp_path / "o", preset=None) == 2  # no config given, none in IN
    assert "give --preset or --config" in capsys.readouterr().err
    assert cli("kyutai", "nope", src, tmp_path / "o") == 2 and leftovers(tmp_path) == []
