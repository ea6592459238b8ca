"""The position encodings of kyutai's LMModel in both stacks: `positional_embedding` (temporal) and
`depformer_pos_emb` (depth), each one of rope, rope_concat (rope whose checkpoint lays q/k rows out half-split),
sin (kyutai's sinusoidal embedding added to the stack's input), sin_rope or none, with `max_period` and
`positional_scale` and their depformer_ forms.

Proven here: the sinusoidal embedding alone against kyutai's `create_sin_embedding` (drawn sizes, periods, positions
up to 4112, both dtypes) and its float32 phase a correctly rounded division; for a model using sin_rope, sin + rope
in the depth stack, scales and periods of its own, and for one using rope_concat in both stacks: kyutai vs ref vs flax
logits, streaming greedy tokens vs LMGen, a CLI conversion from kyutai kwargs (the rope_concat layout converts
without a permutation), the kwargs reader and writer over every pair of kinds, HF's refusal naming the option, and
negative controls (an embedding one position off, the depth stack on the temporal max_period, the scale ignored, a
rope_concat checkpoint permuted as if interleaved, the phase divided by a reciprocal). The options are also drawn by
`strategies.lm_cases` (parity/test_lm_family.py's drawn comparisons)."""

from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import models_flax.sin_embedding as flax_sin
from converters import convert
from converters.kyutai_config import POSITIONAL_EMBEDDINGS, from_kyutai_kwargs
from converters.upstream_config import to_kyutai_kwargs
from models_ref.sin_embedding import sin_embedding as ref_sin_embedding
from moshi_spec import LMConfig
from parity.harness import adapters, lm_options
from parity.harness.compare import assert_parity
from parity.harness.implementations import build

TINY = LMConfig.tiny()
# temporal: sin_rope, max_period 500, positional_scale 0.5; depth: sin_rope too, its own max_period 100 and scale 0.25
SIN = TINY.replace(
    temporal=TINY.temporal.replace(sin_embedding=True, rope_theta=500.0, positional_scale=0.5),
    depth=TINY.depth.replace(rope=True, sin_embedding=True, rope_theta=100.0, positional_scale=0.25),
)
# rope in kyutai's half-split checkpoint layout in both stacks
CONCAT = TINY.replace(
    temporal=TINY.temporal.replace(rope_concat=True), depth=TINY.depth.replace(rope=True, rope_concat=True)
)
IMPLS = ("kyutai", "ref", "flax")


@settings(max_examples=max(2, settings.default.max_examples // 3), deadline=None)
@given(
    dim=st.sampled_from((4, 16, 64, 96, 128, 1024)),
    max_period=st.sampled_from((10_000.0, 500.0, 7.5, 100_000.0)),
    offsets=st.lists(st.integers(0, 4096), min_size=1, max_size=3),
    length=st.sampled_from((1, 5, 16)),
    dtype=st.sampled_from(("float32", "bfloat16")),
)
def test_sin_embedding_matches_kyutai(dim, max_period, offsets, length, dtype):
    """kyutai's create_sin_embedding (in the dtype: in bfloat16 the positions round above 256) vs ref and flax."""
    from moshi.modules.transformer import create_sin_embedding

    positions = np.asarray(offsets)[:, None] + np.arange(length)[None]
    tdt = getattr(torch, dtype)
    expected = create_sin_embedding(torch.from_numpy(positions)[..., None], dim, max_period=max_period, dtype=tdt)
    candidates = {
        "ref": ref_sin_embedding(torch.from_numpy(positions), dim, max_period=max_period, dtype=tdt),
        "flax": flax_sin.sin_embedding(jnp.asarray(positions), dim, max_period=max_period, dtype=jnp.dtype(dtype)),
    }
    for impl, got in candidates.items():
        assert_parity(expected, got, component="sin_embedding", pair=("kyutai", impl), expected_dtype=dtype,
                      config={"dim": dim, "max_period": max_period})  # fmt: skip


def _phases_are_exact(positions: np.ndarray, dim: int) -> bool:
    """flax's float32 phases (jitted) equal p / f_i divided in numpy (IEEE: correctly rounded), bit for bit."""
    got = jax.jit(lambda p: flax_sin.phases(p, dim, max_period=10_000.0, dtype=jnp.float32))(jnp.asarray(positions))
    exact = positions.astype(np.float32)[..., None] / flax_sin.periods(dim, 10_000.0, np.float32)
    return np.array_equal(np.asarray(got), exact)


POSITIONS = 4000 + np.arange(64)[None]


def test_float32_phase_is_a_correctly_rounded_division():
    assert _phases_are_exact(POSITIONS, 128)


def test_negative_control_phase_by_reciprocal(monkeypatch):
    """Without the optimization barrier XLA multiplies by the periods' reciprocals: phases off by an ulp."""
    monkeypatch.setattr(flax_sin.jax.lax, "optimization_barrier", lambda x: x)
    assert not _phases_are_exact(POSITIONS, 128)


@cache
def _runs(cfg: LMConfig):
    """cfg's float32 LM in kyutai, ref and flax, and their logits."""
    models = build("lm", cfg, "float32", impls=IMPLS)
    return models, {impl: models.run(impl, {"codes": lm_options.codes(cfg)}) for impl in IMPLS}


CONFIGS = {"sin_rope": SIN, "rope_concat": CONCAT}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("impl", ("ref", "flax"))
def test_logits_match_kyutai(name, impl):
    cfg = CONFIGS[name]
    _, runs = _runs(cfg)
    lm_options.compare(cfg, runs["kyutai"], runs[impl], ("kyutai", impl), "float32")


@pytest.mark.parametrize("name", CONFIGS)
def test_stream_tokens_match_lmgen(name):
    """float32 greedy streaming, token for token against kyutai's LMGen (the depth stack's positions are its steps)."""
    lm_options.assert_stream_tokens_match_lmgen(_runs(CONFIGS[name])[0])


@pytest.mark.parametrize("name", CONFIGS)
def test_cli_converts_a_checkpoint(name, tmp_path):
    """kyutai kwargs as --config: the Flax LM loaded from the CLI's output computes kyutai's logits."""
    cfg = CONFIGS[name]
    models, runs = _runs(cfg)
    kwargs = to_kyutai_kwargs(cfg)
    assert (kwargs["positional_embedding"], kwargs["depformer_pos_emb"]) == (name, name)
    cand = lm_options.cli_converted_logits(models, kwargs, tmp_path)
    lm_options.compare(cfg, runs["kyutai"], cand, ("kyutai", "flax"), "float32")


def test_kwargs_read_and_write_every_kind():
    """Every (positional_embedding, depformer_pos_emb) pair reads as kyutai builds it and writes back the same."""
    base = to_kyutai_kwargs(TINY) | {"max_period": 500.0, "positional_scale": 0.5, "depformer_max_period": 100.0}
    for temporal in POSITIONAL_EMBEDDINGS:
        for depth in POSITIONAL_EMBEDDINGS:
            kwargs = base | {"positional_embedding": temporal, "depformer_pos_emb": depth}
            cfg = from_kyutai_kwargs(kwargs)
            t, d = cfg.temporal, cfg.depth
            assert (t.rope, t.sin_embedding, t.rope_concat) == ("rope" in temporal, "sin" in temporal,
                                                                temporal == "rope_concat")  # fmt: skip
            assert (d.rope, d.sin_embedding, d.rope_concat) == ("rope" in depth, "sin" in depth, depth == "rope_concat")
            assert (t.rope_theta, d.rope_theta, t.positional_scale, d.positional_scale) == (500.0, 100.0, 0.5, 0.5)
            written = to_kyutai_kwargs(cfg)
            assert (written["positional_embedding"], written["depformer_pos_emb"]) == (temporal, depth)
            assert from_kyutai_kwargs(written) == cfg


def test_kwargs_defaults_are_lmmodels():
    """Absent keys mean what LMModel builds: sin in both stacks (positional_embedding and depformer_pos_emb default to
    "sin"), max_period 10000 and positional_scale 1 inherited by the depth stack."""
    kwargs = {k: v for k, v in to_kyutai_kwargs(TINY).items() if k not in ("positional_embedding", "depformer_pos_emb")}
    cfg = from_kyutai_kwargs(kwargs | {"max_period": 300.0})
    for stack in (cfg.temporal, cfg.depth):
        assert (stack.rope, stack.sin_embedding, stack.rope_theta, stack.positional_scale) == (False, True, 300.0, 1.0)


def test_kwargs_refuse_sizes_kyutai_cannot_build():
    """An odd head_dim under a rope kind and a dim below 4 under a sin kind are named by their kwargs."""
    kwargs = to_kyutai_kwargs(TINY) | {"depformer_pos_emb": "rope", "depformer_num_heads": 16}  # head_dim 1
    with pytest.raises(ValueError, match=r"depformer_dim / depformer_num_heads = 1 is odd: depformer_pos_emb='rope'"):
        from_kyutai_kwargs(kwargs)
    with pytest.raises(ValueError, match=r"positional_embedding='bogus' is not supported"):
        from_kyutai_kwargs(to_kyutai_kwargs(TINY) | {"positional_embedding": "bogus"})


def test_hf_refuses_other_positions():
    """HF's Moshi has rope in the temporal stack only: the harness cannot build the others in HF, and converting one
    to hf names the option."""
    no_rope = TINY.replace(temporal=TINY.temporal.replace(rope=False))
    for cfg, named in ((SIN, "positional_embedding='sin_rope'"), (CONCAT, "depformer_pos_emb='rope'"),
                       (no_rope, "positional_embedding='none'")):  # fmt: skip
        with pytest.raises(ValueError, match=named):
            build("lm", cfg, "float32", impls=("hf",))
    models, _ = _runs(SIN)
    with pytest.raises(ValueError, match=r"convert kyutai->hf \(lm\): HF's Moshi has rope in the temporal stack only"):
        convert(models.states["kyutai"], src="kyutai", dst="hf", cfg=SIN, component="lm")


# Negative controls: each plausible porting bug fails the float32 logits it disturbs.


def _flax_with(cfg: LMConfig, state: dict, run_cfg: LMConfig | None = None) -> dict:
    """flax's LM for run_cfg (default cfg) loaded with a flax state, run on cfg's codes."""
    flax = adapters.adapter("flax")
    built = flax.build("lm", run_cfg or cfg, dtype="float32", init=False)
    flax.load(built, state)
    return flax.run(built, {"codes": lm_options.codes(cfg)})


def _off_by_one(monkeypatch):
    original = flax_sin.sin_embedding
    monkeypatch.setattr(flax_sin, "sin_embedding", lambda positions, *a, **k: original(positions + 1, *a, **k))
    models, _ = _runs(SIN)
    return SIN, models.run("flax", {"codes": lm_options.codes(SIN)})


def _depth_on_temporal_period(monkeypatch):
    models, _ = _runs(SIN)
    wrong = SIN.replace(depth=SIN.depth.replace(rope_theta=SIN.temporal.rope_theta))
    return SIN, _flax_with(SIN, models.states["flax"], wrong)


def _scale_ignored(monkeypatch):
    models, _ = _runs(SIN)
    wrong = SIN.replace(temporal=SIN.temporal.replace(positional_scale=1.0))
    return SIN, _flax_with(SIN, models.states["flax"], wrong)


def _concat_permuted(monkeypatch):
    """kyutai's rope_concat checkpoint converted as if its q/k rows were interleaved."""
    models, _ = _runs(CONCAT)
    interleaved = CONCAT.replace(temporal=CONCAT.temporal.replace(rope_concat=False),
                                 depth=CONCAT.depth.replace(rope_concat=False))  # fmt: skip
    state = convert(models.states["kyutai"], src="kyutai", dst="flax", cfg=interleaved, component="lm")
    return CONCAT, _flax_with(CONCAT, state)


CONTROLS = {  # the bug -> the logits it must disturb
    _off_by_one: "text_logits",
    _depth_on_temporal_period: "audio_logits",
    _scale_ignored: "text_logits",
    _concat_permuted: "text_logits",
}


@pytest.mark.parametrize("control", CONTROLS, ids=lm_options.control_name)
def test_negative_control(control, monkeypatch):
    cfg, cand = control(monkeypatch)
    _, runs = _runs(cfg)
    lm_options.assert_control_fails(cfg, runs["kyutai"], cand, control=lm_options.control_name(control),
                                    components=(CONTROLS[control],))  # fmt: skip
