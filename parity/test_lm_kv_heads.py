"""Grouped kv heads in kyutai's LMModel (`kv_repeat`, and `depformer_kv_repeat`, which the depth stack otherwise
inherits): kyutai vs ref vs flax logits for a model grouping both stacks differently, streaming greedy tokens vs
LMGen, a CLI conversion from kyutai kwargs, and a negative control (heads expanded with tile instead of repeat). The
option is also drawn by `strategies.lm_cases` (parity/test_lm_norms.py's drawn comparison)."""

import json
from functools import cache

import numpy as np
import pytest
from jax import lax
from safetensors.numpy import save_file

from converters.cli import main as cli_main
from converters.upstream_config import to_kyutai_kwargs
from models_flax.checkpoint import from_checkpoint
from models_flax.sampling import GREEDY
from models_flax.streaming import Streamer
from moshi_spec import LMConfig
from parity.harness import adapters
from parity.harness.compare import ParityError
from parity.harness.implementations import build
from parity.harness.mutants import _tiled_kv_heads
from parity.harness.streaming_runs import run_lmgen, run_steps, token_mismatch, user_codes
from parity.test_lm_norms import _codes, _compare

TINY = LMConfig.tiny()
# temporal: 4 query heads over 2 kv heads (kv_repeat 2); depth: 2 heads over 2 kv heads (depformer_kv_repeat 1)
KV = TINY.replace(temporal=TINY.temporal.replace(num_kv_heads_override=2))


@cache
def _kv_runs():
    """The float32 grouped-kv LM in kyutai, ref and flax, and their logits."""
    models = build("lm", KV, "float32", impls=("kyutai", "ref", "flax"))
    return models, {impl: models.run(impl, {"codes": _codes(KV)}) for impl in ("kyutai", "ref", "flax")}


@pytest.mark.parametrize("impl", ("ref", "flax"))
def test_kv_heads_logits_match_kyutai(impl):
    _, runs = _kv_runs()
    _compare(KV, runs["kyutai"], runs[impl], ("kyutai", impl), "float32")


def test_kv_heads_stream_tokens_match_lmgen():
    """float32 greedy streaming, token for token against kyutai's LMGen."""
    models, _ = _kv_runs()
    codes = user_codes(KV, 2, KV.max_delay + 6, seed=2)
    expected = run_lmgen(models.module("kyutai"), codes, use_sampling=False)
    got = run_steps(Streamer(models.module("flax"), text=GREEDY, audio=GREEDY), codes)["tokens"]
    where, _ = token_mismatch(KV, expected, got, names=("kyutai", "flax[step]"))
    assert np.array_equal(expected, got), where


def test_cli_converts_a_kv_heads_checkpoint(tmp_path):
    """kyutai kwargs with kv_repeat=2 and depformer_kv_repeat=1 as --config: the Flax LM loaded from the CLI's
    output computes kyutai's logits."""
    models, runs = _kv_runs()
    kwargs = to_kyutai_kwargs(KV)
    assert (kwargs["kv_repeat"], kwargs["depformer_kv_repeat"]) == (2, 1)
    (tmp_path / "config.json").write_text(json.dumps(kwargs))
    save_file(models.states["kyutai"], str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "flax"
    args = ["--no-progress", "--src", "kyutai", "--dst", "flax", "--config", str(tmp_path / "config.json")]
    assert cli_main([*args, str(tmp_path / "model.safetensors"), str(out)]) == 0
    flax = adapters.adapter("flax")
    loaded = flax.wrap(from_checkpoint(out, precision=lax.Precision.HIGHEST), "lm", KV, dtype="float32")
    _compare(KV, runs["kyutai"], flax.run(loaded, {"codes": _codes(KV)}), ("kyutai", "flax"), "float32")


def test_negative_control_kv_heads_tiled(monkeypatch):
    """Query head h reading kv head h % Hkv (tile) instead of h // groups (repeat) fails against kyutai."""
    models, runs = _kv_runs()
    _tiled_kv_heads(monkeypatch)
    cand = models.run("flax", {"codes": _codes(KV)})
    with pytest.raises(ParityError):
        _compare(KV, runs["kyutai"], cand, ("kyutai", "flax"), "float32", control="kv_heads_tiled")
