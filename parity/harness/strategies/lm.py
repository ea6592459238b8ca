"""LM-level draws: tiny LMs over every kyutai LMModel option the port implements (`lm_cases` chains the option
families), valid codes, and the training loss's codes and weights."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from moshi_spec import ZERO_TOKEN, LMConfig, kyutai
from parity.harness.strategies.layers import DTYPES


@st.composite
def lm_cases(draw: st.DrawFn, *, streaming: bool = False) -> tuple[LMConfig, str]:
    """A tiny LM over the kyutai LMModel options the port implements and a dtype kyutai runs it in: the norms (the
    kinds of `norm=` and `depformer_norm=`, each with its eps, and `norm_emb`), the feed-forward blocks (`ffn_options`:
    gating="none", hidden_scale, depformer_dim_feedforward, layer_scale, depformer_layer_scale), the grouped kv heads
    (`kv_heads`: kv_repeat, depformer_kv_repeat), the depth transformer's weight sharing (`depth_options`:
    depformer_weights_per_step_schedule, depformer_weights_per_step, depformer_multi_linear,
    depformer_low_rank_embeddings), the heads (`head_options`: bias_proj, text_card_out, extra heads, the end padding
    id, demux_second_text_stream), the positions (`positions`: positional_embedding, depformer_pos_emb, max_period,
    positional_scale and their depformer_ forms) and the streams' `delays`. With layer_norm_f32, float32 only (kyutai's
    LayerNormF32 feeds a float32 input to bfloat16 weights, which torch's CPU layer_norm refuses). depformer_norm is a
    layer-norm kind or None: kyutai's forward cannot run the RMS kinds there (parity/test_lm_norms.py). streaming: only
    models kyutai's LMGen can stream (`depth_options`, `head_options`)."""
    # each choice's first value turns its option on: the simplest draw (ci's first) exercises all of them
    norm = draw(st.sampled_from(("layer_norm_f32", "layer_norm", "rms_norm", "rms_norm_f32")))
    depformer_norm = draw(st.sampled_from(("layer_norm_f32", "layer_norm", None)))
    f32_only = "layer_norm_f32" in (norm, depformer_norm)
    dtype = draw(st.sampled_from(("float32",) if f32_only else DTYPES))
    norm_emb = draw(st.sampled_from((True, False)))
    cfg = LMConfig.tiny().with_norm(norm).replace(depformer_norm=depformer_norm, norm_emb=norm_emb)
    cfg = draw(kv_heads(draw(ffn_options(cfg))))
    cfg = draw(head_options(draw(depth_options(cfg, streaming=streaming)), streaming=streaming))
    return draw(delays(draw(positions(cfg)))), dtype


@st.composite
def delays(draw: st.DrawFn, cfg: LMConfig) -> LMConfig:
    """cfg with kyutai's delays drawn (any per stream, the text's too), an irregular pattern first: every stream's
    delay in 0..3 (kyutai LMModel and LMGen take any), cfg's own (Moshi's pattern) or none."""
    irregular = tuple((5 * k + 2) % 4 for k in range(1 + cfg.n_q))
    return cfg.replace(delays=draw(st.sampled_from((irregular, cfg.delays, (0,) * (1 + cfg.n_q)))))


POSITIONAL_EMBEDDINGS = ("sin_rope", "sin", "rope_concat", "none", "rope")
"""kyutai's positional_embedding values, the ones with a sinusoidal embedding first."""


@st.composite
def positions(draw: st.DrawFn, cfg: LMConfig) -> LMConfig:
    """cfg with kyutai's position options drawn, each choice's first value turning its option on: each stack's kind
    (positional_embedding, depformer_pos_emb: rope, rope_concat, sin, sin_rope, none), max_period (the depth stack's
    inherited or its own depformer_max_period) and positional_scale (likewise)."""
    t, d = cfg.temporal, cfg.depth
    stacks = []
    for sub, theta, scale in ((t, draw(st.sampled_from((500.0, 10_000.0))), draw(st.sampled_from((0.5, 1.0)))),
                              (d, None, None)):  # fmt: skip
        kind = draw(st.sampled_from(POSITIONAL_EMBEDDINGS))
        theta = draw(st.sampled_from((100.0, stacks[0].rope_theta))) if theta is None else theta
        scale = draw(st.sampled_from((0.25, stacks[0].positional_scale))) if scale is None else scale
        stacks.append(sub.replace(rope="rope" in kind, rope_concat=kind == "rope_concat", sin_embedding="sin" in kind,
                                  rope_theta=theta, positional_scale=scale))  # fmt: skip
    return cfg.replace(temporal=stacks[0], depth=stacks[1])


HIDDEN_SCALES = (2.5, 4.125, 3, 4)
"""kyutai hidden_scale values (dim_feedforward = int(hidden_scale * dim)): non-integers first; 4 takes the gating's
21/8 rule (moshi_spec.kyutai.gating_hidden)."""


@st.composite
def ffn_options(draw: st.DrawFn, cfg: LMConfig) -> LMConfig:
    """cfg with kyutai's feed-forward options drawn, each choice's first value turning its option on: the temporal
    stack plain (gating="none", exact gelu) or gated, its width from a hidden_scale, the depth stack's width from
    hidden_scale or its own depformer_dim_feedforward, layer_scale in the temporal stack (LMModel passes it on to the
    depth stack) and depformer_layer_scale (the inherited one, another, or none)."""
    t, d = cfg.temporal, cfg.depth
    gated = draw(st.sampled_from((False, True)))
    scale = draw(st.sampled_from(HIDDEN_SCALES))
    dff = int(scale * t.dim)
    temporal = t.replace(gated=gated, ffn_dim=2 * kyutai.gating_hidden(t.dim, dff) if gated else dff)
    temporal = temporal.replace(activation=t.activation if gated else "gelu")
    depth_dff = draw(st.sampled_from((40, None)))  # depformer_dim_feedforward, or hidden_scale's
    depth_width = kyutai.gating_hidden(d.dim, depth_dff or int(scale * d.dim))
    layer_scale = draw(st.sampled_from((1e-4, None)))  # kyutai LayerScale's default init
    depth_scale = draw(st.sampled_from((layer_scale, 0.01, None)))
    return cfg.replace(
        temporal=temporal.replace(layer_scale=layer_scale),
        depth=d.replace(ffn_dim=2 * depth_width, layer_scale=depth_scale),
    )


@st.composite
def kv_heads(draw: st.DrawFn, cfg: LMConfig) -> LMConfig:
    """cfg with kyutai's grouped kv heads drawn, grouping first: kv_repeat (the temporal heads per kv head, a divisor
    of num_heads) and depformer_kv_repeat (LMModel passes kv_repeat on, unless it is given)."""
    t, d = cfg.temporal, cfg.depth
    repeat = draw(st.sampled_from([r for r in (2, 4, 1) if t.num_heads % r == 0]))
    depth_repeat = draw(st.sampled_from([r for r in dict.fromkeys((repeat, 1, 2)) if d.num_heads % r == 0]))
    return cfg.replace(
        temporal=t.replace(num_kv_heads_override=None if repeat == 1 else t.num_heads // repeat),
        depth=d.replace(num_kv_heads_override=None if depth_repeat == 1 else d.num_heads // depth_repeat),
    )


@st.composite
def head_options(draw: st.DrawFn, cfg: LMConfig, *, streaming: bool = False) -> LMConfig:
    """cfg with kyutai's head options drawn, each choice's first value turning its option on: bias_proj, text_card_out
    (a wider, a narrower or the text_card-wide text head), extra heads (extra_heads_num_heads, extra_heads_dim), the
    end padding id and demux_second_text_stream (never with norm_emb: kyutai's ScaledEmbedding asserts). streaming:
    no head wider than the text embedding without demux (LMGen could not feed a sampled token back: Streamer
    refuses it, parity/test_lm_heads.py)."""
    bias = draw(st.sampled_from((True, False)))
    demux = draw(st.sampled_from((True, False))) and not cfg.norm_emb
    wider = () if streaming and not demux else (cfg.text_card + 7,)
    text_out = draw(st.sampled_from((*wider, cfg.text_card - 5, None)))
    # extra heads' widths of at least 5: their logits are judged as text logits are, top-5 agreement included
    heads, dim = draw(st.sampled_from((2, 0))), draw(st.sampled_from((5, 6)))
    end = draw(st.sampled_from((1, 0)))
    return cfg.replace(
        bias_proj=bias, text_card_out=text_out, extra_heads=heads, extra_heads_dim=dim,
        existing_text_end_padding_id=end, demux_second_text_stream=demux,
    )  # fmt: skip


DEPTH_SCHEDULES = ((2, 0, 1, 1), (0, 0, 0, 0), (0, 1, 0, 1))
"""kyutai depformer_weights_per_step_schedule values for dep_q = 4 (codebook -> weight set): steps sharing sets in
an order that is not the codebooks', one set for all, alternating."""


@st.composite
def depth_options(draw: st.DrawFn, cfg: LMConfig, *, streaming: bool = False) -> LMConfig:
    """cfg with kyutai's depth-transformer options drawn, each choice's first value turning its option on: the weight
    sets of the depth stack (a schedule of DEPTH_SCHEDULES, one set shared by every step: depformer_weights_per_step
    False, or kyutai's one per codebook), per-set gating widths that differ (a per-step depformer_dim_feedforward list)
    or one width, one shared input projection (depformer_multi_linear False) or one per weight set, and low-rank depth
    embeddings (depformer_low_rank_embeddings) or full-rank ones. streaming: no stack shared by every step (kyutai's
    LMGen cannot stream it: its depformer has no context for a streaming KV cache, parity/test_lm_depth_options.py)."""
    d = cfg.depth
    kinds = ("schedule", "per_codebook") if streaming else ("schedule", "shared", "per_codebook")
    sharing = draw(st.sampled_from(kinds))
    schedule = draw(st.sampled_from(DEPTH_SCHEDULES)) if sharing == "schedule" and cfg.dep_q == 4 else None
    sets = cfg.dep_q if schedule is None else max(schedule) + 1
    depth = d.replace(flexible=False, num_codebooks=1) if sharing == "shared" else d.replace(num_codebooks=sets)
    if sharing != "shared" and sets > 1 and draw(st.sampled_from((True, False))):  # per-set widths that differ
        widths = tuple(2 * kyutai.gating_hidden(d.dim, w) for w in (40, 24, 48, 32)[:sets])
        depth = depth.replace(ffn_dims=widths, ffn_dim=max(widths))
    return cfg.replace(
        depth=depth,
        depth_schedule=schedule,
        depth_multi_linear=draw(st.sampled_from((False, True))),
        depth_low_rank=draw(st.sampled_from((8, None))),
    )


def random_codes(cfg: LMConfig, batch: int, length: int, *, seed: int, zero_fraction: float = 0.0) -> np.ndarray:
    """Valid LM codes (B, 1 + n_q, T): text ids < text_vocab (text_card, or every muxed pair with
    demux_second_text_stream), audio ids < card, some set to the zero token -1."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, cfg.card, size=(batch, 1 + cfg.n_q, length))
    codes[:, 0] = rng.integers(0, cfg.text_vocab, size=(batch, length))
    codes[rng.random(codes.shape) < zero_fraction] = ZERO_TOKEN
    return codes.astype(np.int64)


def loss_codes(
    cfg: LMConfig, batch: int, length: int, *, seed: int, padding_ids: tuple[int, ...], padding_fraction: float = 0.3
) -> np.ndarray:
    """Codes for the training loss: random_codes with text padding ids at random places (a fraction of the text
    positions) and a span of zero tokens (-1) at a random place in every stream of every row."""
    rng = np.random.default_rng(seed)
    codes = random_codes(cfg, batch, length, seed=seed)
    padding = rng.random((batch, length)) < padding_fraction
    codes[:, 0][padding] = rng.choice(padding_ids, size=int(padding.sum()))
    for row in range(batch):
        for stream in range(1 + cfg.n_q):
            start, span = rng.integers(0, length), rng.integers(1, 4)
            codes[row, stream, start : start + span] = ZERO_TOKEN
    return codes


@st.composite
def loss_weights(draw: st.DrawFn, *, dep_q: int, padding_ids: tuple[int, ...]) -> dict:
    """Keyword arguments of the LM loss (moshi_spec/loss.py): the recipe's first-codebook multiplier (1, its 7B
    example's 100, or another), per-codebook weights (uniform or not, a zero among them), a text padding weight
    (1, the recipe's 0.5, 0, or another) on `padding_ids`, and a text weight."""
    codebook = st.floats(0.0, 3.0, allow_subnormal=False)
    audio = st.none() | st.lists(codebook, min_size=dep_q, max_size=dep_q).filter(lambda w: sum(w[1:]) > 0.1)
    return {
        "first_codebook_weight_multiplier": draw(st.sampled_from((1.0, 100.0)) | st.floats(0.1, 10.0)),
        "audio_weights": draw(audio),
        "text_padding_weight": draw(st.sampled_from((1.0, 0.5, 0.0)) | st.floats(0.01, 2.0)),
        "text_padding_ids": padding_ids,
        "text_weight": draw(st.sampled_from((1.0,)) | st.floats(0.1, 2.0)),
    }
