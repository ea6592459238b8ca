"""What the conversion CLI writes for upstream loaders (issue "Hardening", conversion CLI): a kyutai OUT carries the
`config.json` kyutai's own loader reads and computes the logits of the LM its weights came from; an hf OUT carries the
`config.json` `MoshiForConditionalGeneration.from_pretrained` reads (a local directory, no hub) and builds the model
with the same weights; a config an upstream cannot express is refused before anything is written; the Orbax save, the
longest step of a 7B conversion, shows its progress.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import converters
from converters import convert, from_hf_config
from converters.cli import main
from converters.inputs import read_config
from converters.lm_config import lm_config_to_dict
from parity.harness.adapters import kyutai
from parity.test_lm_converters import CFG, cli, kyutai_lm, kyutai_state, leftovers, write_kyutai

os.environ.setdefault("NO_TORCH_COMPILE", "1")


def codes(batch: int = 2, steps: int = 12) -> torch.Tensor:
    """kyutai LMModel input (B, 1 + n_q, T), longer than the context window (8), with some zero tokens."""
    rng = np.random.default_rng(5)
    out = rng.integers(0, CFG.card, (batch, 1 + CFG.n_q, steps))
    out[:, 0] = rng.integers(0, CFG.text_card, (batch, steps))
    out[rng.random(out.shape) < 0.1] = -1
    return torch.from_numpy(out)


def test_kyutai_out_loads_with_kyutais_loader_and_computes_the_source_logits(tmp_path):
    from moshi.models import loaders

    state = kyutai_state()
    source = kyutai_lm().eval()
    converters.load_torch(source, state)
    assert cli("kyutai", "hf", write_kyutai(tmp_path, state), tmp_path / "hf") == 0
    assert cli("hf", "kyutai", tmp_path / "hf", tmp_path / "out", preset=None) == 0  # config: the hf OUT's record
    out = tmp_path / "out"
    written = json.loads((out / "config.json").read_text())
    assert written == kyutai.lm_kwargs(CFG) | {"moshi_name": "model.safetensors"}
    info = loaders.CheckpointInfo.from_hf_repo(  # every path local: nothing is downloaded
        "unused/repo", config_path=out / "config.json", moshi_weights=out / written["moshi_name"],
        mimi_weights=tmp_path / "no-mimi.safetensors", tokenizer=tmp_path / "no-tokenizer.model",
    )  # fmt: skip
    loaded = info.get_moshi(device="cpu", dtype=torch.float32)
    with torch.no_grad():
        got, want = loaded(codes()), source(codes())
    for name in ("logits", "text_logits", "mask", "text_mask"):
        assert np.array_equal(getattr(got, name).numpy(), getattr(want, name).numpy(), equal_nan=True), name
    assert np.isfinite(got.text_logits.numpy()[got.text_mask.numpy()]).all()
    assert read_config(out / "config.json")[0] == CFG  # our CLI reads it back as --config


def test_hf_config_json_loads_with_from_pretrained_to_the_same_weights(tmp_path):
    from transformers import MoshiConfig, MoshiForConditionalGeneration

    state = kyutai_state()
    assert cli("kyutai", "hf", write_kyutai(tmp_path, state), tmp_path / "out") == 0
    config = MoshiConfig.from_pretrained(tmp_path / "out")
    assert from_hf_config(config.to_dict()) == CFG
    model = MoshiForConditionalGeneration.from_pretrained(tmp_path / "out")  # Mimi (audio_encoder) left to HF's init
    lm = {k: v for k, v in converters.torch_state(model).items() if not k.startswith("audio_encoder.")}
    want = convert(state, src="kyutai", dst="hf", cfg=CFG, component="lm")
    assert sorted(lm) == sorted(want)
    for key, value in want.items():
        assert lm[key].dtype == value.dtype and lm[key].tobytes() == value.tobytes(), key
    assert read_config(tmp_path / "out" / "config.json")[0] == CFG


def _plain_silu_ffn() -> dict:
    """Our LMConfig dict of a plain (ungated) temporal FFN with silu: kyutai's plain FFN is always exact gelu."""
    return lm_config_to_dict(CFG.replace(temporal=CFG.temporal.replace(gated=False)))


@pytest.mark.parametrize(
    ("dst", "config_of", "said"),
    [
        (
            "hf",
            lambda: kyutai.lm_kwargs(CFG) | {"delays": [0, 0, 2, 2, 2, 0, 2, 2, 2]},
            "an HF MoshiConfig cannot express this LMConfig: delays=[0, 0, 2",
        ),
        (
            "kyutai",
            _plain_silu_ffn,
            "kyutai's plain FFN (gating='none') applies exact gelu, got activation 'silu'",
        ),
    ],
    ids=["hf", "kyutai"],
)
def test_a_config_the_upstream_cannot_express_is_refused_before_writing(tmp_path, capsys, dst, config_of, said):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_of()))
    src = write_kyutai(tmp_path, kyutai_state())
    assert cli("kyutai", dst, src, tmp_path / "out", "--config", str(config), preset=None) == 1
    assert said in capsys.readouterr().err and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_orbax_save_shows_its_progress(tmp_path, capsys):
    src = write_kyutai(tmp_path, kyutai_state())
    assert main(["--src", "kyutai", "--dst", "flax", "--preset", "tiny", str(src), str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "save params/ (Orbax, bytes on disk)" in err and "convert kyutai->flax" in err


def test_entry_point_and_flax_loaders_need_no_torch(tmp_path):
    """`python -m converters` (run as `-m` runs it) converts a kyutai LM and a kyutai Mimi to flax and refuses an OUT
    that exists (exit 1, naming it); the Flax loaders then build and run both. One fresh interpreter in which torch,
    transformers and moshi cannot be imported: what a Flax user on a TPU host has."""
    import subprocess
    import sys
    from pathlib import Path

    from parity.test_mimi_cli import kyutai_state as mimi_state
    from parity.test_mimi_cli import write as write_mimi

    lm_src, mimi_src = write_kyutai(tmp_path, kyutai_state()), write_mimi(tmp_path, mimi_state())
    lm_out, mimi_out = tmp_path / "lm", tmp_path / "mimi"
    code = f"""
import runpy, sys
[sys.modules.__setitem__(m, None) for m in ("torch", "transformers", "moshi")]

def cli(*argv):
    sys.argv = ["converters", "--src", "kyutai", "--dst", "flax", *argv]
    try:
        runpy.run_module("converters", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code or 0
    return 0

assert cli("--preset", "tiny", {str(lm_src)!r}, {str(lm_out)!r}) == 0
assert cli("--preset", "mimi_tiny", {str(mimi_src)!r}, {str(mimi_out)!r}) == 0
assert cli("--preset", "tiny", {str(lm_src)!r}, {str(lm_out)!r}) == 1  # OUT exists
import jax.numpy as jnp
from flax import nnx
import models_flax.mimi
from models_flax.checkpoint import from_checkpoint
lm = from_checkpoint({str(lm_out)!r})
assert lm(jnp.zeros((1, 9, 3), jnp.int32)).text_logits.shape == (1, 1, 3, 48)
mimi = models_flax.mimi.from_checkpoint({str(mimi_out)!r})
codes = nnx.jit(lambda m, a: m.encode(a))(mimi, jnp.zeros((1, 1, 3 * mimi.cfg.frame_size)))
assert codes.shape == (1, 4, 3), codes.shape
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).parents[1])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "converted kyutai -> flax: 49 keys" in done.stdout and "converted kyutai -> flax" in done.stdout
    assert "exists" in done.stderr
