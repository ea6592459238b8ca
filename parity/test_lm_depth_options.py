"""The depth-transformer options of kyutai's LMModel: `depformer_weights_per_step_schedule` (codebook c runs weight
set schedule[c]: steps share weights, max(schedule) + 1 sets, and as many depformer_in projections), per-step
`depformer_dim_feedforward` widths that differ (kyutai 0.2.13: one per weight set; the port zero-pads the narrower
sets), `depformer_low_rank_embeddings` (depth embeddings of rank r, then norm_emb's norm of width r, the zero token's
zeroing and a linear r -> depformer_dim), and the two switches Moshi-7B turns on, off: `depformer_multi_linear=False`
(one temporal -> depth projection for every step) and `depformer_weights_per_step=False` (one depth weight set).

Proved here: kyutai vs ref vs flax float32 logits for a model with a schedule, differing per-set widths and low-rank
embeddings under norm_emb, and for one with a shared depth stack (kyutai's plain FFN) and a shared input projection;
greedy streaming tokens vs kyutai LMGen for the first (kyutai's LMGen cannot stream the second: its depformer KV cache
needs weights_per_step or a context, and LMModel sets depformer_context to None, so the Flax step's logits are compared
with kyutai's full forward of what the stream consumed instead); CLI conversions of kyutai checkpoints with their
kwargs as --config; the kwargs written read back as the same config; parameter counts; bad values refused naming the
field; HF refusing each option by name; nonzero padding refused; and negative controls (the schedule ignored by the
layers or by the input projections, the low-rank projection reshaped where it is transposed, the narrower widths
padded after [gate; value] instead of per half). The options are also drawn by `strategies.lm_cases`
(parity/test_lm_norms.py's drawn comparison); kyutai's config layouts with them are read by
parity/test_config_readers.py."""

from functools import cache

import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from converters import convert, transforms
from converters.lm_config import from_kyutai_kwargs
from converters.upstream_config import to_hf_config, to_kyutai_kwargs
from models_flax.sampling import GREEDY
from models_flax.streaming import Streamer
from moshi_spec import LMConfig, kyutai
from moshi_spec.validation import ConfigError
from parity.harness import adapters, lm_options
from parity.harness.compare import assert_parity
from parity.harness.implementations import build
from parity.harness.placement import rule_specs
from parity.harness.streaming_runs import (
    aligned_logits,
    consumed_codes,
    kyutai_logits,
    run_lmgen,
    run_steps,
    user_codes,
)

TINY = LMConfig.tiny()
# codebooks 0..3 run weight sets 2, 0, 1, 1 (three sets) whose gatings differ in width (depformer_dim_feedforward
# [40, 24, 48]: hidden 26, 16, 32), and so do the three depformer_in projections; rank-8 depth embeddings (depth dim
# 16), each with norm_emb's layer norm of width 8
WIDTHS = tuple(2 * kyutai.gating_hidden(16, w) for w in (40, 24, 48))
MIXED = TINY.replace(
    depth=TINY.depth.replace(num_codebooks=3, ffn_dims=WIDTHS, ffn_dim=max(WIDTHS)),
    depth_schedule=(2, 0, 1, 1),
    depth_low_rank=8,
    norm_emb=True,
)
# kyutai's defaults for both switches: one depth weight set and one input projection for every step; such a depformer
# may have kyutai's plain FFN (depformer_gating="none": linear1 40 wide, exact gelu), which weights_per_step forbids
SHARED = TINY.replace(
    depth=TINY.depth.replace(flexible=False, num_codebooks=1, gated=False, activation="gelu", ffn_dim=40),
    depth_multi_linear=False,
)
CONFIGS = {"mixed": MIXED, "shared": SHARED}
IMPLS = ("kyutai", "ref", "flax")


@cache
def _runs(name: str):
    """The float32 LM `name` in kyutai, ref and flax, and their logits."""
    cfg = CONFIGS[name]
    models = build("lm", cfg, "float32", impls=IMPLS)
    return models, {impl: models.run(impl, {"codes": lm_options.codes(cfg)}) for impl in IMPLS}


@pytest.mark.parametrize("impl", ("ref", "flax"))
@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_kyutai(name, impl):
    _, runs = _runs(name)
    lm_options.compare(CONFIGS[name], runs["kyutai"], runs[impl], ("kyutai", impl), "float32")


def test_schedule_stream_tokens_match_lmgen():
    """float32 greedy streaming of the schedule / low-rank / shared-projection model, token for token against LMGen
    (whose depformer picks weight set schedule[step] by its streaming offset)."""
    lm_options.assert_stream_tokens_match_lmgen(_runs("mixed")[0])


def test_shared_depth_step_logits_match_kyutai():
    """kyutai's LMGen cannot stream a depformer without weights_per_step (its KV cache has no capacity: LMModel sets
    depformer_context to None); the Flax step's logits are compared with kyutai's full forward of the codes the stream
    consumed, frame by frame."""
    models, _ = _runs("shared")
    user = user_codes(SHARED, 2, SHARED.max_delay + lm_options.STREAM_FRAMES, seed=2)
    with pytest.raises(RuntimeError, match="Cannot create a streaming KVCache without a context"):
        run_lmgen(models.module("kyutai"), user, use_sampling=False)
    run = run_steps(Streamer(models.module("flax"), text=GREEDY, audio=GREEDY), user)
    expected = kyutai_logits(models.module("kyutai"), consumed_codes(SHARED, user, run))
    for component, (full, step) in aligned_logits(SHARED, expected, run).items():
        assert_parity(full, step, component=component, pair=("kyutai", "flax[step]"), expected_dtype="float32",
                      logits=True, config={"preset": "tiny", "depth": "shared"})  # fmt: skip


@pytest.mark.parametrize("name", CONFIGS)
def test_cli_converts_a_checkpoint(name, tmp_path):
    """kyutai kwargs as --config: the Flax LM loaded from the CLI's output computes kyutai's logits; the kwargs read
    back as the same config."""
    cfg = CONFIGS[name]
    models, runs = _runs(name)
    kwargs = to_kyutai_kwargs(cfg)
    assert from_kyutai_kwargs(kwargs) == cfg
    cand = lm_options.cli_converted_logits(models, kwargs, tmp_path)
    lm_options.compare(cfg, runs["kyutai"], cand, ("kyutai", "flax"), "float32")


def test_kwargs_and_parameter_counts():
    """The kwargs name each option as kyutai takes it; num_params counts kyutai's parameters, and Flax's but for the
    zero padding of the narrower weight sets' MLPs."""
    mixed, shared = to_kyutai_kwargs(MIXED), to_kyutai_kwargs(SHARED)
    assert mixed["depformer_weights_per_step_schedule"] == [2, 0, 1, 1]
    assert mixed["depformer_dim_feedforward"] == [39, 24, 48]  # 39 and 40 both give a gating of hidden 26
    assert (mixed["depformer_low_rank_embeddings"], mixed["depformer_multi_linear"]) == (8, True)
    assert (shared["depformer_weights_per_step"], shared["depformer_multi_linear"]) == (False, False)
    assert (shared["depformer_gating"], shared["depformer_dim_feedforward"]) == ("none", 40)
    for name, cfg in CONFIGS.items():
        models, _ = _runs(name)
        kyutai_count = sum(p.numel() for p in models.module("kyutai").parameters())
        flax_count = sum(x.size for x in nnx.to_flat_state(nnx.state(models.module("flax"), nnx.Param)).leaves)
        d = cfg.depth
        padding = d.num_layers * sum(3 * (d.ffn_dim - f) * d.dim // 2 for f in d.ffn_dims or ())  # fc1 and fc2
        assert cfg.num_params() == kyutai_count == flax_count - padding, name
    state = _runs("mixed")[0].states["kyutai"]
    assert state["depformer_emb.0.weight"].shape == (TINY.card + 1, 8)
    assert state["depformer_emb.0.low_rank.weight"].shape == (16, 8)
    assert [k for k in state if k.startswith("depformer_in.")] == [f"depformer_in.{c}.weight" for c in range(3)]
    assert {k.split(".")[5] for k in state if k.startswith("depformer.layers.0.self_attn.in_projs.")} == {"0", "1", "2"}


def test_new_parameters_have_sharding_rules():
    """Every parameter matches one rule: a low-rank projection splits depformer_dim, a shared depth stack's kernels
    split as the temporal stack's (rank 2), a flexible one's keep the weight-set axis replicated."""
    for name, spec in (("mixed", P(None, None, "fsdp")), ("shared", P(None, "fsdp"))):
        flat = rule_specs(_runs(name)[0].module("flax"), {"dp": 1, "fsdp": 2})
        assert flat["depth.layers.0.self_attn.q_proj.kernel"] == spec, name
    flat = rule_specs(_runs("mixed")[0].module("flax"), {"dp": 1, "fsdp": 2})
    assert flat["depth.embed_tokens.0.low_rank.kernel"] == P(None, "fsdp")


HF_REFUSALS = {
    "schedule": (
        MIXED.replace(depth_low_rank=None, norm_emb=False, depth=TINY.depth.replace(num_codebooks=3)),
        "depformer_weights_per_step_schedule",
    ),
    "low rank": (TINY.replace(depth_low_rank=8), "depformer_low_rank_embeddings=8"),
    "multi_linear": (TINY.replace(depth_multi_linear=False), "depformer_multi_linear=False"),
    "weights_per_step": (
        SHARED.replace(depth_multi_linear=True, depth=TINY.depth.replace(flexible=False, num_codebooks=1)),
        "depformer_weights_per_step=False",
    ),
    "per-set widths": (
        TINY.replace(depth=TINY.depth.replace(ffn_dims=(52, 32, 64, 64), ffn_dim=64)),
        r"per-set widths \(52, 32, 64, 64\) \(depth stack; kyutai's per-step depformer_dim_feedforward\)",
    ),
}


@pytest.mark.parametrize("name", HF_REFUSALS)
def test_hf_refuses_depth_options(name):
    """HF's depth decoder has a weight set and an input projection per codebook and full-rank embeddings: its
    config writer, the harness and the converters refuse each option, naming it (hf stays a hop: kyutai -> flax)."""
    cfg, option = HF_REFUSALS[name]
    with pytest.raises(ValueError, match=option):
        to_hf_config(cfg)
    with pytest.raises(ValueError, match=option):
        build("lm", cfg, "float32", impls=("hf",))


def test_hf_conversion_of_a_kyutai_checkpoint_is_refused():
    """Converting kyutai checkpoints with the options to hf is refused where the conversion starts, naming them."""
    cfg, option = HF_REFUSALS["schedule"]
    state = build("lm", cfg, "float32", impls=("kyutai",)).states["kyutai"]
    with pytest.raises(ValueError, match=rf"convert kyutai->hf \(lm\): .*{option}"):
        convert(state, src="kyutai", dst="hf", cfg=cfg, component="lm")
    with pytest.raises(ValueError, match=r"convert kyutai->hf \(lm\): .*depformer_weights_per_step=False"):
        convert(_runs("shared")[0].states["kyutai"], src="kyutai", dst="hf", cfg=SHARED, component="lm")


BAD_CONFIGS = {
    "schedule of the wrong length": (
        dict(depth_schedule=(0, 1, 1)), r"depth_schedule has 3 entries \(0, 1, 1\), expected one weight set per"
    ),
    "negative entry": (dict(depth_schedule=(0, -1, 1, 0)), r"depth_schedule\[1\] must be >= 0, got -1"),
    "schedule that is not a tuple": (dict(depth_schedule=[0, 1, 1, 0]), r"depth_schedule must be a tuple of ints"),
    "sets not max + 1": (dict(depth_schedule=(0, 1, 1, 0)), r"depth.num_codebooks 4 must equal max\(depth_schedule"),
    "low rank 0": (dict(depth_low_rank=0), r"depth_low_rank must be >= 1 or None, got 0"),
    "low rank not an int": (dict(depth_low_rank=8.0), r"depth_low_rank must be an int or None, got 8.0"),
    "multi_linear not a bool": (dict(depth_multi_linear=1), r"depth_multi_linear must be a bool, got 1"),
    "schedule on a shared stack": (
        dict(depth=SHARED.depth, depth_schedule=(0, 0, 0, 0)), r"depth_schedule \(0, 0, 0, 0\) needs a flexible depth"
    ),
    "shared stack with sets": (dict(depth=SHARED.depth.replace(num_codebooks=4)), r"depth.num_codebooks must be 1"),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_config_names_the_field(name):
    changes, message = BAD_CONFIGS[name]
    with pytest.raises(ConfigError, match=message):
        TINY.replace(**changes)


BAD_STACKS = {
    "widths of the wrong count": (dict(ffn_dims=(52, 32, 64)), r"ffn_dims has 3 widths \(52, 32, 64\), expected num_"),
    "odd width": (dict(ffn_dims=(52, 33, 64, 64)), r"ffn_dims must be even \(gate and value halves\)"),
    "ffn_dim not the widest": (dict(ffn_dims=(52, 32, 64, 64), ffn_dim=52), r"ffn_dim 52 must be max\(ffn_dims"),
    "all equal": (dict(ffn_dims=(32,) * 4), r"ffn_dims \(32, 32, 32, 32\) are all equal: give ffn_dim alone"),
    "not flexible": (dict(flexible=False, ffn_dims=(32, 64, 64, 64)), r"needs a flexible, gated stack"),
    "a width below 2": (dict(ffn_dims=(0, 32, 32, 32)), r"ffn_dims\[0\] must be >= 2, got 0"),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD_STACKS)
def test_bad_per_set_widths_name_the_field(name):
    changes, message = BAD_STACKS[name]
    with pytest.raises(ConfigError, match=message):
        TINY.depth.replace(**{"ffn_dim": 64, **changes})


BAD_KWARGS = {
    "schedule of the wrong length": (
        {"depformer_weights_per_step_schedule": [0, 1]},
        r"depformer_weights_per_step_schedule has 2 entries, kyutai needs one per depformer step \(dep_q=4\)",
    ),
    "negative entry": (
        {"depformer_weights_per_step_schedule": [0, -1, 0, 0]},
        r"depformer_weights_per_step_schedule=\[0, -1, 0, 0\] has a negative weight set index",
    ),
    "schedule without weights_per_step": (
        {"depformer_weights_per_step_schedule": [0, 0, 0, 0], "depformer_weights_per_step": False},
        r"needs depformer_weights_per_step=True",
    ),
    "low rank 0": ({"depformer_low_rank_embeddings": 0}, r"depformer_low_rank_embeddings=0 is not a positive integer"),
    "widths per schedule set": (
        {"depformer_weights_per_step_schedule": [0, 1, 1, 0], "depformer_dim_feedforward": [40] * 4},
        r"4 widths, kyutai needs one per weight set of depformer_weights_per_step_schedule=\[0, 1, 1, 0\]",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", BAD_KWARGS)
def test_bad_kyutai_kwargs_name_the_key(name):
    changes, message = BAD_KWARGS[name]
    with pytest.raises(ValueError, match=message):
        from_kyutai_kwargs(to_kyutai_kwargs(TINY) | changes)


def test_equal_widths_per_schedule_set_read_as_one():
    """A per-set list whose gatings are all equally wide is one width (39 and 40 both give hidden 26)."""
    cfg = MIXED.replace(depth=MIXED.depth.replace(ffn_dims=None, ffn_dim=WIDTHS[0]))
    kwargs = to_kyutai_kwargs(cfg)
    assert from_kyutai_kwargs(kwargs | {"depformer_dim_feedforward": [39, 40, 40]}) == cfg


# Negative controls: plausible porting bugs, each failing the float32 logits against kyutai.


def _run_flax(cfg: LMConfig, state: dict) -> dict:
    adapter = adapters.adapter("flax")
    built = adapter.build("lm", cfg, dtype="float32", init=False)
    adapter.load(built, state)
    return adapter.run(built, {"codes": lm_options.codes(cfg)})


def _schedule_ignored(models, monkeypatch):
    """The depth layers run weight set c % sets for codebook c, ignoring the schedule (as for one set per step)."""
    monkeypatch.setattr(
        LMConfig, "depth_sets", property(lambda cfg: tuple(c % cfg.depth_sets_count for c in range(cfg.dep_q)))
    )
    return _run_flax(MIXED, models.states["flax"])


def _projections_by_codebook(models, monkeypatch):
    """The temporal -> depth projections picked by codebook (c % sets), not by the schedule as kyutai's depformer_in."""
    monkeypatch.setattr(
        LMConfig, "depth_in_sets", property(lambda cfg: tuple(c % cfg.depth_sets_count for c in range(cfg.dep_q)))
    )
    return _run_flax(MIXED, models.states["flax"])


def _low_rank_reshaped(models, monkeypatch):
    """The torch (Dd, r) low-rank weight made the (r, Dd) Flax kernel by reshape instead of transpose."""
    state = dict(models.states["flax"])
    for key in [k for k in state if ".low_rank." in k]:
        state[key] = np.ascontiguousarray(state[key].T).reshape(state[key].shape)
    return _run_flax(MIXED, state)


def _widths_padded_at_the_end(models, monkeypatch):
    """A narrower weight set's gating padded after its [gate; value] rows instead of after each half: its value half
    is read as part of the gate."""

    def stack_fc1(inputs, cfg):
        rows = cfg.ffn_dim
        return [[np.stack([np.pad(w, ((0, rows - w.shape[0]), (0, 0))) for w in inputs[0]])]]

    monkeypatch.setitem(transforms.TRANSFORMS, "stack_fc1", stack_fc1)
    return _run_flax(MIXED, convert(models.states["kyutai"], src="kyutai", dst="flax", cfg=MIXED, component="lm"))


CONTROLS = {
    _schedule_ignored: "audio_logits",
    _projections_by_codebook: "audio_logits",
    _low_rank_reshaped: "audio_logits",
    _widths_padded_at_the_end: "audio_logits",
}


@pytest.mark.parametrize("control", CONTROLS, ids=lm_options.control_name)
def test_negative_control(control, monkeypatch):
    models, runs = _runs("mixed")
    cand = control(models, monkeypatch)
    lm_options.assert_control_fails(MIXED, runs["kyutai"], cand, control=lm_options.control_name(control),
                                    components=(CONTROLS[control],))  # fmt: skip


def test_nonzero_padding_is_refused():
    """Weights whose padding beyond a narrower set's width is not zero are no kyutai model's: converting them to
    kyutai is refused, naming the set (the round trip of real weights is bit-exact)."""
    models, _ = _runs("mixed")
    state = dict(models.states["flax"])
    back = convert(state, src="flax", dst="kyutai", cfg=MIXED, component="lm")
    assert all(np.array_equal(back[k], v) for k, v in models.states["kyutai"].items())
    key = "depth.layers.0.mlp.fc2.kernel"  # (sets, hidden, dim): set 1 (hidden 16 of 32) gets a row beyond its width
    state[key] = state[key].copy()
    state[key][1, 20] = 1.0
    with pytest.raises(ValueError, match=r"weight set 1: fc2 is nonzero beyond its width 32"):
        convert(state, src="flax", dst="kyutai", cfg=MIXED, component="lm")
