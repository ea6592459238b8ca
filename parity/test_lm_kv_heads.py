"""Grouped kv heads in kyutai's LMModel (`kv_repeat`, and `depformer_kv_repeat`, which the depth stack otherwise
inherits): kyutai vs ref vs flax logits for a model grouping both stacks differently, streaming greedy tokens vs
LMGen, a CLI conversion from kyutai kwargs, and a negative control (heads expanded with tile instead of repeat). The
option is also drawn by `strategies.lm_cases` (parity/test_lm_family.py's drawn comparisons)."""

from functools import cache

import pytest

from converters.upstream_config import to_kyutai_kwargs
from moshi_spec import LMConfig
from parity.harness import lm_options
from parity.harness.implementations import build
from parity.harness.mutants import _tiled_kv_heads

TINY = LMConfig.tiny()
# temporal: 4 query heads over 2 kv heads (kv_repeat 2); depth: 2 heads over 2 kv heads (depformer_kv_repeat 1)
KV = TINY.replace(temporal=TINY.temporal.replace(num_kv_heads_override=2))


@cache
def _kv_runs():
    """The float32 grouped-kv LM in kyutai, ref and flax, and their logits."""
    models = build("lm", KV, "float32", impls=("kyutai", "ref", "flax"))
    return models, {impl: models.run(impl, {"codes": lm_options.codes(KV)}) for impl in ("kyutai", "ref", "flax")}


@pytest.mark.parametrize("impl", ("ref", "flax"))
def test_kv_heads_logits_match_kyutai(impl):
    _, runs = _kv_runs()
    lm_options.compare(KV, runs["kyutai"], runs[impl], ("kyutai", impl), "float32")


def test_kv_heads_stream_tokens_match_lmgen():
    """float32 greedy streaming, token for token against kyutai's LMGen."""
    lm_options.assert_stream_tokens_match_lmgen(_kv_runs()[0])


def test_cli_converts_a_kv_heads_checkpoint(tmp_path):
    """kyutai kwargs with kv_repeat=2 and depformer_kv_repeat=1 as --config: the Flax LM loaded from the CLI's
    output computes kyutai's logits."""
    models, runs = _kv_runs()
    kwargs = to_kyutai_kwargs(KV)
    assert (kwargs["kv_repeat"], kwargs["depformer_kv_repeat"]) == (2, 1)
    cand = lm_options.cli_converted_logits(models, kwargs, tmp_path)
    lm_options.compare(KV, runs["kyutai"], cand, ("kyutai", "flax"), "float32")


def test_negative_control_kv_heads_tiled(monkeypatch):
    """Query head h reading kv head h % Hkv (tile) instead of h // groups (repeat) fails against kyutai."""
    models, runs = _kv_runs()
    _tiled_kv_heads(monkeypatch)
    cand = models.run("flax", {"codes": lm_options.codes(KV)})
    lm_options.assert_control_fails(KV, runs["kyutai"], cand, control="kv_heads_tiled")
