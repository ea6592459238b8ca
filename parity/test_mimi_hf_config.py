"""HF transformers' MimiConfig read and written by the converters (converters/mimi_hf_config.py), checked against the
installed transformers itself: its defaults are the released Mimi; what we write, transformers' MimiConfig takes and
its `to_dict()` reads back as the same MimiConfig; `--dst hf` writes a directory `MimiModel.from_pretrained` loads with
every weight and no key left over, which encodes as the harness's HF Mimi does; that directory converts back without
--preset or --config; a bad HF config is refused, naming its key.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters.checkpoint import read_safetensors_index
from converters.inputs import read_config
from converters.mimi_hf_config import HF_DEFAULTS, from_hf_mimi_config, to_hf_mimi_config
from moshi_spec import MimiConfig
from parity.harness import strategies
from parity.harness.converter_cases import assert_bit_equal
from parity.harness.mimi_hf import hf_config
from parity.test_mimi_cli import CFG, cli, kyutai_state, write

HFMimiConfig = pytest.importorskip("transformers").MimiConfig
KV_HEADS = CFG.replace(transformer=CFG.transformer.replace(num_kv_heads_override=1))
CONFIGS = {"tiny": CFG, "mimi": MimiConfig.mimi(), "kv_heads": KV_HEADS,
           "replicate": CFG.replace(seanet=CFG.seanet.replace(pad_mode="replicate")),
           "stride_4": CFG.replace(frame_rate=CFG.frame_rate / 2)}  # fmt: skip


def test_hf_defaults_are_the_released_mimi():
    """The defaults table is transformers' own (the two its `__post_init__` derives: filled in), and a file that
    leaves every key out, or holds them all, reads as our `mimi` preset."""
    hf = HFMimiConfig().to_dict()
    assert {key: hf[key] for key in HF_DEFAULTS} == HF_DEFAULTS | {"upsampling_ratios": [8, 6, 5, 4], "head_dim": 64}
    assert from_hf_mimi_config(hf) == MimiConfig.mimi()
    assert from_hf_mimi_config({"model_type": "mimi"}) == MimiConfig.mimi()


@pytest.mark.parametrize("name", CONFIGS)
def test_written_config_reads_back_through_transformers(name):
    """What we write builds transformers' MimiConfig (its frame rate and head width ours), and what it then writes
    itself (`to_dict`, through JSON) reads back as the config (num_codebooks: min(8, n_q), as kyutai's get_mimi)."""
    cfg = CONFIGS[name]
    hf = HFMimiConfig(**to_hf_mimi_config(cfg))
    assert (hf.frame_rate, hf.head_dim, hf.latent_stride) == (cfg.frame_rate, cfg.transformer.head_dim,
                                                              cfg.resample_stride)  # fmt: skip
    back = from_hf_mimi_config(json.loads(json.dumps(hf.to_dict())))
    assert back == cfg.replace(num_codebooks=min(8, cfg.n_q))


def test_hf_out_loads_with_from_pretrained_and_converts_back(tmp_path):
    """`--dst hf` writes what `MimiModel.from_pretrained` loads: every weight, none left over, the converter's values,
    and the same encode as the harness's HF Mimi of the same weights; `--src hf` then reads that directory's own
    config.json and converts back to kyutai's file bit for bit."""
    from transformers import MimiModel

    src = write(tmp_path, kyutai_state())
    assert cli("kyutai", "hf", src, tmp_path / "hf") == 0
    loaded, info = MimiModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert read_config(tmp_path / "hf" / "config.json")[0] == CFG
    harness = MimiModel(hf_config(CFG)).eval()
    harness.load_state_dict(loaded.state_dict())
    audio = torch.from_numpy(strategies.audio("speech", CFG, frames=4, batch=1, seed=0))
    with torch.no_grad():
        got = loaded.eval().encode(audio, num_quantizers=CFG.num_codebooks).audio_codes
        want = harness.encode(audio, num_quantizers=CFG.num_codebooks).audio_codes
    assert np.array_equal(got.numpy(), want.numpy())
    assert cli("hf", "kyutai", tmp_path / "hf", tmp_path / "back", preset=None) == 0
    index, _ = read_safetensors_index(tmp_path / "back" / "model.safetensors")
    assert_bit_equal(kyutai_state(), {key: info.load() for key, info in index.items()})


BAD = {
    "conv_shortcut": ({"use_conv_shortcut": True}, "use_conv_shortcut=True is not supported"),
    "groups": ({"upsample_groups": 1}, "upsample_groups=1 is not 16"),
    "bins": ({"codebook_size": 1000}, "codebook_size=1000: HF's Mimi needs a power of 2"),
    "dim_type": ({"hidden_size": "16"}, "hidden_size='16' is not a positive integer"),
    "rope": ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_parameters.rope_type='linear'"),
    "window": ({"sliding_window": None}, "sliding_window=None is not a positive integer"),
    "heads": (
        {"num_attention_heads": 3, "num_key_value_heads": 3, "head_dim": None},
        "num_attention_heads=3 does not divide hidden_size=16 (head_dim is null)",
    ),
    "kv_heads": ({"num_key_value_heads": 3}, "num_attention_heads=2 is not a multiple of num_key_value_heads=3"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_hf_config_is_refused_naming_its_key(tmp_path, capsys, name):
    change, said = BAD[name]
    (tmp_path / "config.json").write_text(json.dumps(to_hf_mimi_config(CFG) | change))
    src = write(tmp_path, kyutai_state())
    assert cli("kyutai", "flax", src, tmp_path / "o", "--config", str(tmp_path / "config.json"), preset=None) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'config.json'}: HF Mimi config" in err and said in err, err
    assert not (tmp_path / "o").exists()
