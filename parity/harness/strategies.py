"""The one strategies module: hypothesis draws layer configs and inputs for every parity test.

Shapes come from small sets so that compiled code and upstream module construction stay cheap; values cover the
regimes where porting bugs show: input magnitudes from tiny (eps dominates RMSNorm) to large, per-row position offsets
(rope, masks), context windows shorter than the sequence, head_dim != dim / heads, grouped key/value heads, several
codebooks and every FlexibleLinear layer_idx mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from moshi_spec import ACTIVATIONS, ZERO_TOKEN, LMConfig, MimiConfig, TransformerConfig, kyutai

DTYPES = ("float32", "bfloat16")
LAYER_IDX_MODES = ("none", "int", "0d", "1d", "broadcast")
MAGNITUDES = (1e-3, 1.0, 30.0)
ATTENTION_MAGNITUDES = (1e-3, 1.0)
"""Input scales for a standalone attention layer. In the model attention only sees RMS-normalized inputs; at rms 30
its scores reach ~1e3, where one-ulp differences of torch's and XLA's float32 cos/sin (rope) move near-tied softmaxes
by up to 6e-5 x rms (measured on a drawn example, hf->flax and ref->flax alike; 6e-7 with rope off): conditioning, not
porting. Decoder layers normalize first and keep drawing all of MAGNITUDES."""


@dataclass(frozen=True)
class Case:
    """One drawn example: a config, an input and how to call the layer."""

    cfg: TransformerConfig
    dtype: str
    x: np.ndarray  # float32 values; each implementation casts them to `dtype` (identically: round to nearest even)
    positions: np.ndarray  # (B, T) int64, offset per row + arange(T)
    layer_idx: object  # None, int, or an int64 array (0-d or 1-D)
    mode: str

    def inputs(self) -> dict:
        """The layer's inputs as the adapters take them (parity/harness/adapters/base.py)."""
        return {"x": self.x, "positions": self.positions, "layer_idx": self.layer_idx}

    def describe(self) -> dict:
        """Builtin-typed summary for the record (the reproduction of this example)."""
        idx = self.layer_idx.tolist() if isinstance(self.layer_idx, np.ndarray) else self.layer_idx
        return {
            "dtype": self.dtype,
            "x_shape": list(self.x.shape),
            "x_rms": float(np.sqrt(np.mean(np.square(self.x)))),
            "offsets": self.positions[:, 0].tolist(),
            "layer_idx_mode": self.mode,
            "layer_idx": idx,
        }


@st.composite
def configs(
    draw: st.DrawFn,
    *,
    flexible: bool | None = None,
    rope: bool | None = None,
    kyutai: bool = False,
    rope_layout: str | None = None,
) -> TransformerConfig:
    """A layer config. kyutai=True restricts to what kyutai can build (head_dim = dim / heads, eps 1e-8)."""
    dim = draw(st.sampled_from((16, 32)))
    num_heads = draw(st.sampled_from((2, 4)))
    head_dim = None if kyutai else draw(st.sampled_from((None, 4, 8, 16)))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, num_heads) if num_heads % h == 0]))
    flex = draw(st.booleans()) if flexible is None else flexible
    return TransformerConfig(
        dim=dim,
        num_heads=num_heads,
        num_layers=1,
        ffn_dim=draw(st.sampled_from((32, 48, 64))),
        head_dim_override=head_dim,
        num_kv_heads_override=kv_heads,
        activation=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=1e-8 if kyutai else draw(st.sampled_from((1e-8, 1e-6, 1e-5))),
        rope=draw(st.booleans()) if rope is None else rope,
        rope_theta=draw(st.sampled_from((10_000.0, 500.0, 1e6))),
        rope_layout=rope_layout or draw(st.sampled_from(("half", "interleaved"))),
        context=draw(st.sampled_from((None, 1, 3, 8))),
        num_codebooks=draw(st.sampled_from((2, 3, 4))) if flex else 1,  # HF builds plain linears at 1
        flexible=flex,
    )


@st.composite
def kyutai_layer_options(draw: st.DrawFn, cfg: TransformerConfig) -> tuple[TransformerConfig, str]:
    """A kyutai-buildable layer config (`configs(kyutai=True)`) with the options of kyutai's StreamingTransformerLayer
    drawn, each choice's first value turning its option on: the norm kind (its eps kyutai's), the plain FFN
    (gating="none": exact gelu, no weight set per step), layer_scale and with rope kyutai's rope_concat (its weights
    half-split); plus a dtype kyutai runs it in (its LayerNormF32 cannot run bfloat16 weights on CPU: float32 only
    there)."""
    norm = draw(st.sampled_from(("layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32")))
    plain = not cfg.flexible and draw(st.booleans())
    concat = cfg.rope and draw(st.sampled_from((True, False)))
    cfg = cfg.replace(norm=norm, norm_eps=None, layer_scale=draw(st.sampled_from((0.01, None))), rope_concat=concat)
    if plain:
        cfg = cfg.replace(gated=False, activation="gelu")
    return cfg, draw(st.sampled_from(("float32",) if norm == "layer_norm_f32" else DTYPES))


@st.composite
def cases(
    draw: st.DrawFn,
    cfg_strategy: st.SearchStrategy[TransformerConfig],
    *,
    dtype: str | None = None,
    max_offset: int = 4096,
    zero_offsets: bool = False,
    modes: tuple[str, ...] = LAYER_IDX_MODES,
    width: str = "dim",
    magnitudes: tuple[float, ...] = MAGNITUDES,
) -> Case:
    """A config plus an input (B, T, width) in float32, positions (B, T) and a layer_idx valid for the config.

    For flexible configs the sequence length follows the layer_idx mode: None needs T == num_codebooks, broadcast
    T == 1.
    max_offset bounds per-row position offsets (HF comparisons use small ones: HF's rope frequencies round differently,
    see test_rope's expected divergence); zero_offsets pins them at 0 (kyutai outside streaming).
    """
    cfg = draw(cfg_strategy)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.sampled_from((1, 2, 3)))
    mode = draw(st.sampled_from(modes)) if cfg.flexible else "none"
    layers = cfg.num_codebooks
    layer_idx: object = None
    if not cfg.flexible or mode == "none":
        length = layers if cfg.flexible else draw(st.sampled_from((1, 2, 5, 9)))
    elif mode == "broadcast":
        length = 1
        layer_idx = rng.integers(0, layers, size=draw(st.integers(1, 4)))
    else:
        length = draw(st.sampled_from((1, 2, 5)))
        if mode == "int":
            layer_idx = int(rng.integers(0, layers))
        elif mode == "0d":
            layer_idx = np.asarray(rng.integers(0, layers))
        else:
            layer_idx = rng.integers(0, layers, size=length)
    offsets = np.zeros(batch, np.int64) if zero_offsets else rng.integers(0, max_offset + 1, size=batch)
    positions = offsets[:, None] + np.arange(length)[None]
    magnitude = draw(st.sampled_from(magnitudes))
    features = {"dim": cfg.dim, "head": cfg.head_dim}[width]
    shape = (batch, length, cfg.num_heads, features) if width == "head" else (batch, length, features)
    x = (magnitude * rng.standard_normal(shape)).astype(np.float32)
    return Case(cfg, dtype or draw(st.sampled_from(DTYPES)), x, positions.astype(np.int64), layer_idx, mode)


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


@dataclass(frozen=True)
class AttentionCase:
    """Raw attention inputs for the Pallas kernels: q (B, T, H, D), k/v (B, S, Hkv, D) float32 values (cast to `dtype`
    by the test), positions (B, T) and (B, S) (-1: an empty cache slot), and the context window."""

    dtype: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    q_positions: np.ndarray
    k_positions: np.ndarray
    context: int | None

    def describe(self) -> dict:
        return {
            "dtype": self.dtype,
            "q_shape": list(self.q.shape),
            "kv_shape": list(self.k.shape),
            "context": self.context,
            "q_offsets": self.q_positions[:, 0].tolist(),
            "valid_keys": (self.k_positions >= 0).sum(axis=1).tolist(),
            "q_rms": float(np.sqrt(np.mean(np.square(self.q)))),
        }


@st.composite
def attention_cases(
    draw: st.DrawFn,
    *,
    steps: tuple[int, ...] = (1, 3, 9, 17),
    kv_lengths: tuple[int, ...] = (1, 5, 12, 21),
    head_dims: tuple[int, ...] = (8, 16, 64),
    ring: bool = False,
    dtype: str | None = None,
) -> AttentionCase:
    """Attention inputs over lengths that are not block multiples, q_len != kv_len, per-row offsets, context windows,
    grouped kv heads and empty (-1) key slots.

    ring=False: keys are a prefix of the stream, positions k_off + arange(S) with some leading slots empty; the queries
    are the last T positions (shifted by a few steps either way, so some rows may see no key at all). ring=True: keys
    are a ring cache of capacity S after writing positions 0..end (slot p % S, -1 where never written), the queries the
    T positions ending at `end`: slot order then differs from position order.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.sampled_from((1, 2)))
    length = draw(st.sampled_from(steps))
    kv_len = draw(st.sampled_from(kv_lengths))
    heads, kv_heads = draw(st.sampled_from(((2, 1), (4, 2), (2, 2))))
    head_dim = draw(st.sampled_from(head_dims))
    context = draw(st.sampled_from((None, 1, 4, 7, 3000)))
    q_pos = np.zeros((batch, length), np.int64)
    k_pos = np.full((batch, kv_len), -1, np.int64)
    for b in range(batch):
        if ring:
            end = int(rng.integers(length - 1, length + 3 * kv_len))
            written = np.arange(max(0, end + 1 - kv_len), end + 1)
            k_pos[b, written % kv_len] = written
            q_pos[b] = np.arange(end + 1 - length, end + 1)
        else:
            offset = int(rng.integers(0, 50))
            empty = int(rng.integers(0, kv_len)) if draw(st.booleans()) else 0
            k_pos[b, empty:] = offset + np.arange(kv_len - empty)
            shift = draw(st.sampled_from((0, 0, 0, 2, -3)))
            q_pos[b] = offset + kv_len - length + shift + np.arange(length)
    magnitude = draw(st.sampled_from(MAGNITUDES))
    q, k, v = (
        (scale * rng.standard_normal(shape)).astype(np.float32)
        for scale, shape in (
            (magnitude, (batch, length, heads, head_dim)),
            (magnitude, (batch, kv_len, kv_heads, head_dim)),
            (1.0, (batch, kv_len, kv_heads, head_dim)),
        )
    )
    return AttentionCase(dtype or draw(st.sampled_from(DTYPES)), q, k, v, q_pos, k_pos, context)


SIGNALS = ("noise", "sines", "silence", "speech")
"""Mimi's test audio: white noise, a chord of three sines with a slow amplitude swing, silence, and real speech
(espeak-ng, parity/harness/speech.py, resampled to the config's rate; skipped where the library cannot load)."""
SPEECH_TEXT = "The quick brown fox jumps over the lazy dog, while Moshi listens and speaks."


def audio(signal: str, cfg: MimiConfig, *, frames: int, batch: int, seed: int = 0) -> np.ndarray:
    """(batch, channels, frames * frame_size) float32 audio of one of SIGNALS, rms ~0.1-0.3; speech rows start at
    different offsets of the utterance."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; known: {SIGNALS}")
    length, rate = frames * cfg.frame_size, cfg.sample_rate
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.seanet.channels, length)
    if signal == "noise":
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)
    if signal == "silence":
        return np.zeros(shape, np.float32)
    if signal == "sines":
        t = np.arange(length) / rate
        nyquist = rate / 2
        tones = sum(np.sin(2 * np.pi * (f * nyquist) * t + p) for f, p in ((0.05, 0.0), (0.13, 1.0), (0.31, 2.0)))
        swing = 0.6 + 0.4 * np.sin(2 * np.pi * t * rate / length)
        return np.broadcast_to((0.1 * tones * swing).astype(np.float32), shape).copy()
    from parity.harness import speech

    reason = speech.available()
    if reason is not None:
        import pytest

        pytest.skip(f"no speech synthesiser: {reason}")
    voice = speech.synthesize(SPEECH_TEXT, sample_rate=rate)
    need = length + (batch - 1) * cfg.frame_size
    voice = np.resize(voice, need) if voice.shape[0] < need else voice
    rows = [voice[b * cfg.frame_size : b * cfg.frame_size + length] for b in range(batch)]
    return np.broadcast_to(np.stack(rows)[:, None], shape).astype(np.float32).copy()


@st.composite
def mimi_configs(draw: st.DrawFn) -> MimiConfig:
    """Small Mimi configs over every option that changes the computation: padding mode, strides (2 or 3 stages),
    residual blocks and dilations, kernel sizes, branch compression, transformer heads, layers and context (down to
    2 steps, shorter than a frame's 2 steps times the clip), codebook counts, sizes and active codebooks. Two encoder
    steps per frame (resample stride 2), at 100 frames/s."""
    from moshi_spec import SEANetConfig

    ratios = draw(st.sampled_from(((4, 2), (2, 3), (2, 2, 2))))
    hop = int(np.prod(ratios))
    n_q = draw(st.integers(2, 5))
    seanet = SEANetConfig(
        dimension=16,
        n_filters=4,
        ratios=ratios,
        n_residual_layers=draw(st.integers(1, 2)),
        dilation_base=draw(st.sampled_from((1, 2))),
        kernel_size=draw(st.sampled_from((3, 7))),
        residual_kernel_size=draw(st.sampled_from((3, 5))),
        last_kernel_size=draw(st.sampled_from((1, 3))),
        compress=draw(st.sampled_from((2, 4))),
        pad_mode=draw(st.sampled_from(("constant", "replicate"))),
    )
    transformer = TransformerConfig(
        dim=16, num_heads=draw(st.sampled_from((2, 4))), num_layers=draw(st.integers(1, 2)),
        ffn_dim=draw(st.sampled_from((16, 32))), activation="gelu", norm_eps=1e-5, rope_layout="interleaved",
        context=draw(st.sampled_from((2, 5, 12))),
    )  # fmt: skip
    return MimiConfig(
        sample_rate=200 * hop, frame_rate=100.0, seanet=seanet, transformer=transformer, codebook_dim=8,
        bins=draw(st.sampled_from((8, 32))), n_q=n_q, num_codebooks=draw(st.integers(1, n_q)),
    )  # fmt: skip
