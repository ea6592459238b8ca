"""Config dataclasses for Moshi's transformers and LM, with presets traceable to upstream numbers.

Field names follow kyutai where they exist (`n_q`, `dep_q`, `card`, `text_card`, `context`, `delays`). What the two
upstreams take is derived elsewhere: kyutai `LMModel` kwargs and HF `MoshiConfig`s by the harness's adapters
(parity/harness/adapters/kyutai.py, hf.py), and configs are read back from upstream files by converters/lm_config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from moshi_spec.validation import Checker

ACTIVATIONS = ("silu", "gelu", "relu", "sigmoid", "tanh")
"""Activation names every implementation knows; anything else is an error, never a fallback."""

ZERO_TOKEN = -1
"""kyutai's zero token: a code that embeds to an exact zero vector (no input for that stream at that step) and that
the loss never scores."""

ROPE_LAYOUTS = ("half", "interleaved")
"""`half`: HF's rotate_half, pairs (i, i + D/2). `interleaved`: kyutai's pairs (2i, 2i + 1)."""

NORM_EPS = {"rms_norm": 1e-5, "rms_norm_f32": 1e-8, "layer_norm": 1e-5, "layer_norm_f32": 1e-8}
"""kyutai's norm kinds (`create_norm_fn` in moshi.modules.transformer) and the eps each one fixes. rms_norm computes
in the input's dtype, rms_norm_f32 in float32; both layer norms (weight and bias) compute in float32 (torch's
nn.LayerNorm does so for a bfloat16 input too) and differ only in eps."""


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """One stack of pre-norm decoder layers (Moshi's temporal or depth transformer).

    Every field is checked at construction (and by `replace`); moshi_spec.validation states the type rule, the bounds
    are given below, and all problems of one config are raised together in a ConfigError.

    Attributes:
        dim: hidden size D (>= 1).
        num_heads: query heads H (>= 1); must divide dim unless head_dim_override is given.
        num_layers: decoder layers (>= 1).
        ffn_dim: output width of the MLP's first linear (HF `ffn_dim`): gated, twice the hidden width (even, >= 2);
            plain (gated=False), the hidden width itself (kyutai's dim_feedforward).
        head_dim_override: per-head width when it differs from dim // num_heads (HF allows it, kyutai does not);
            None or >= 1, and even when rope is on (as is the derived head_dim).
        num_kv_heads_override: key/value heads (grouped-query attention) when they differ from num_heads; None or a
            divisor of num_heads.
        activation: the MLP's activation, one of ACTIVATIONS (the gate's when gated).
        gated: whether the MLP is gated (kyutai's `gating=<activation>`, HF's only MLP: fc1's first half through the
            activation times its second half) or plain (kyutai's `gating="none"`: fc2(activation(fc1(x))), kyutai's
            activation being exact GELU).
        layer_scale: kyutai's `layer_scale`: a learnt per-channel scale (D,) on the attention's and on the MLP's
            residual update, initialised to this value; None (Moshi-7B, kyutai's default): none. Finite.
        norm: the norm kind of the layers, one of NORM_EPS (Moshi-7B: rms_norm_f32); the LM's final norm too.
        norm_eps: the norm's epsilon (inside the square root); finite, >= 0. None (the default) takes the kind's
            (NORM_EPS: what kyutai fixes); another value is the port's and HF's (MoshiRMSNorm's eps is free) and
            kyutai refuses it. `replace(norm=...)` moves an eps that was the old kind's to the new kind's.
        rope: whether attention applies rotary embeddings (kyutai's `rope`, `rope_concat` and `sin_rope`; Moshi's
            depth transformer has none).
        rope_theta: kyutai's `max_period`: the rotary base and the sinusoidal embedding's period; finite, > 1
            (checked even when both are off).
        rope_layout: pairing of rotary dimensions in our weights (ref, flax), one of ROPE_LAYOUTS; the weights must be
            laid out to match.
        rope_concat: kyutai's `rope_concat`: the same rotation as its `rope`, but its checkpoint lays q/k rows out for
            half-split pairs (i, i + D/2) instead of interleaved ones. A property of the kyutai checkpoint only (the
            converters permute by it); needs rope and no sin_embedding (kyutai has no `sin_rope_concat`).
        sin_embedding: kyutai's sinusoidal embedding (`sin`, `sin_rope`): positional_scale * [cos(p / f), sin(p / f)],
            f = rope_theta ** (i / (D/2 - 1)), added to the stack's input at each position p, computed in the
            activations' dtype as kyutai does (in bfloat16 the positions themselves round above 256). dim must be
            even and >= 4.
        positional_scale: kyutai's `positional_scale`, the sinusoidal embedding's factor; finite.
        context: attention window: query at position p sees keys at p - context < k <= p. None (unbounded) or >= 1.
        num_codebooks: weight sets of the per-codebook ("flexible") linears (>= 1); 1 for the temporal transformer.
        flexible: whether attention and MLP use one weight set per codebook (the depth transformer).
        ffn_dims: kyutai 0.2.13's per-step `depformer_dim_feedforward` widths that differ: weight set i's gated MLP is
            ffn_dims[i] wide (its fc1's output, even, >= 2); a flexible, gated stack only, num_codebooks entries, and
            ffn_dim their maximum. The port stores every set ffn_dim wide, set i's extra rows of fc1 (in each half)
            and columns of fc2 zero, which computes set i's MLP exactly (act(0) * 0 = 0; the converters pad and unpad
            them, refusing padding that is not zero). None (the default): every set ffn_dim wide.
    """

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    head_dim_override: int | None = None
    num_kv_heads_override: int | None = None
    activation: str = "silu"
    gated: bool = True
    layer_scale: float | None = None
    norm: str = "rms_norm_f32"
    norm_eps: float = None  # type: ignore[assignment]  (None: the kind's eps, set by __post_init__)
    rope: bool = True
    rope_theta: float = 10_000.0
    rope_layout: Literal["half", "interleaved"] = "half"
    rope_concat: bool = False
    sin_embedding: bool = False
    positional_scale: float = 1.0
    context: int | None = None
    num_codebooks: int = 1
    flexible: bool = False
    ffn_dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        """Checks every field (types as moshi_spec.validation states, ranges) and the rules between them.

        Raises:
            ConfigError: a ValueError (a TypeError too when every problem is a wrong type) listing every problem.
        """
        c = Checker(self)
        for name in ("dim", "num_heads", "num_layers", "ffn_dim", "num_codebooks"):
            c.integer(name)
        for name in ("head_dim_override", "num_kv_heads_override", "context"):
            c.integer(name, optional=True)
        c.choice("activation", ACTIVATIONS)
        c.choice("rope_layout", ROPE_LAYOUTS)
        c.choice("norm", tuple(NORM_EPS))
        if self.norm_eps is None and c.valid("norm"):
            object.__setattr__(self, "norm_eps", NORM_EPS[self.norm])
        if self.norm_eps is not None:  # None here: an unknown norm, already reported
            c.real("norm_eps", at_least=0.0)
        c.real("rope_theta", above=1.0)
        c.flag("rope")
        c.flag("rope_concat")
        c.flag("sin_embedding")
        c.real("positional_scale")
        c.flag("flexible")
        c.flag("gated")
        if self.layer_scale is not None:
            c.real("layer_scale")
        if c.valid("ffn_dim", "gated") and self.gated:
            c.require(
                "ffn_dim", self.ffn_dim % 2 == 0, f"ffn_dim must be even (gate and value halves), got {self.ffn_dim}"
            )
        heads, dim, override = self.num_heads, self.dim, self.head_dim_override
        if c.valid("dim", "num_heads", "head_dim_override") and override is None:
            c.require(
                "num_heads",
                dim % heads == 0,
                f"dim {dim} is not divisible by num_heads {heads} (head_dim would be {dim / heads:g}); "
                "give head_dim_override or another num_heads",
            )
        if c.valid("dim", "num_heads", "head_dim_override", "rope") and self.rope:
            c.require(
                "head_dim_override" if override is not None else "num_heads",
                self.head_dim % 2 == 0,
                f"rope needs an even head_dim, got {self.head_dim} "
                + (f"(head_dim_override {override})" if override is not None else f"(dim {dim} // num_heads {heads})"),
            )
        if c.valid("rope", "rope_concat", "sin_embedding") and self.rope_concat:
            c.require("rope_concat", self.rope and not self.sin_embedding,
                      "rope_concat (a kyutai checkpoint layout of rope) needs rope=True and sin_embedding=False, got "
                      f"rope={self.rope}, sin_embedding={self.sin_embedding}")  # fmt: skip
        if c.valid("dim", "sin_embedding") and self.sin_embedding:
            c.require("dim", dim % 2 == 0 and dim >= 4,
                      f"the sinusoidal embedding needs an even dim >= 4 (cos and sin halves, periods over D/2 - 1 "
                      f"steps), got {dim}")  # fmt: skip
        if self.ffn_dims is not None and c.integers("ffn_dims", minimum=2):
            self._check_ffn_dims(c)
        kv = self.num_kv_heads_override
        if c.valid("num_heads", "num_kv_heads_override") and kv is not None:
            c.require(
                "num_kv_heads_override",
                heads % kv == 0,
                f"num_heads {heads} is not a multiple of num_kv_heads_override {kv}",
            )
        c.raise_if_any()

    def _check_ffn_dims(self, c: Checker) -> None:
        """ffn_dims: a flexible gated stack's per-set widths, even, one per set, the largest ffn_dim."""
        dims = self.ffn_dims
        assert dims is not None
        c.require(
            "ffn_dims", all(f % 2 == 0 for f in dims), f"ffn_dims must be even (gate and value halves), got {dims}"
        )
        if c.valid("flexible", "gated"):
            c.require("ffn_dims", self.flexible and self.gated, f"ffn_dims {dims} needs a flexible, gated stack")
        if c.valid("num_codebooks"):
            k = self.num_codebooks
            c.require("ffn_dims", len(dims) == k, f"ffn_dims has {len(dims)} widths {dims}, expected num_codebooks {k}")
        if c.valid("ffn_dim") and dims:
            c.require("ffn_dim", self.ffn_dim == max(dims), f"ffn_dim {self.ffn_dim} must be max(ffn_dims {dims})")
        c.require("ffn_dims", len(set(dims)) != 1, f"ffn_dims {dims} are all equal: give ffn_dim alone (None)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads if self.head_dim_override is None else self.head_dim_override

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads_override is None else self.num_kv_heads_override

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def hidden(self) -> int:
        """The MLP's hidden width (the input width of its second linear): kyutai's gating `hidden` (ffn_dim / 2) when
        gated, ffn_dim when plain."""
        return self.ffn_dim // 2 if self.gated else self.ffn_dim

    @property
    def weight_sets(self) -> int:
        """Weight sets per linear: num_codebooks when flexible, else 1."""
        return self.num_codebooks if self.flexible else 1

    @property
    def layer_norm(self) -> bool:
        """Whether the norms are layer norms (weight and bias) rather than RMSNorms (weight only)."""
        return self.norm.startswith("layer_norm")

    @property
    def norm_upcast(self) -> bool:
        """Whether an RMSNorm computes in float32 (rms_norm_f32) rather than in its input's dtype (rms_norm)."""
        return self.norm != "rms_norm"

    def replace(self, **changes: Any) -> TransformerConfig:
        """dataclasses.replace; a new `norm` without a new `norm_eps` brings its own eps if the old one was the old
        kind's."""
        if "norm" in changes and "norm_eps" not in changes and self.norm_eps == NORM_EPS[self.norm]:
            changes["norm_eps"] = None
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameters of the layer stack (no embeddings, no final norm)."""
        attn = self.dim * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.dim
        widths = (self.ffn_dim,) * self.weight_sets if self.ffn_dims is None else self.ffn_dims
        hidden = (f // 2 if self.gated else f for f in widths)
        mlp = sum(self.dim * f + h * self.dim for f, h in zip(widths, hidden, strict=True))  # kyutai's, no padding
        scales = 0 if self.layer_scale is None else 2 * self.dim
        return self.num_layers * (self.weight_sets * attn + mlp + 2 * self.norm_params + scales)

    @property
    def norm_params(self) -> int:
        """Parameters of one norm: a scale, plus a bias for a layer norm."""
        return (2 if self.layer_norm else 1) * self.dim


@dataclass(frozen=True, kw_only=True)
class LMConfig:
    """The Moshi LM: a temporal transformer over frames and a depth transformer over codebooks.

    Checked at construction like TransformerConfig; the stacks are checked against the LM's sizes.

    Attributes:
        temporal: the temporal transformer (Moshi's: rope and a context window); not flexible.
        depth: the depth transformer over the dep_q steps of a frame (positions 0..dep_q-1; Moshi's has no positional
            encoding; no context window: kyutai's LMModel overrides depformer_context with None). Flexible (kyutai's
            depformer_weights_per_step, Moshi-7B): num_codebooks weight sets, dep_q of them or max(depth_schedule) + 1,
            and gated; not flexible: one weight set shared by every step (num_codebooks 1, no depth_schedule).
        n_q: audio streams fed to the temporal transformer (Moshi's dep_q and the user's); >= 1.
        dep_q: audio codebooks Moshi predicts (depth steps after the text step); 1 <= dep_q <= n_q.
        card: audio codebook size (>= 1); id `card` is the initial audio token.
        text_card: text vocabulary size (>= 1); id `text_card` is the initial text token.
        delays: per-stream delays, text first: a tuple of 1 + n_q ints >= 0.
        existing_text_padding_id: kyutai's text padding id, a text token: 0 <= id < text_card.
        norm_emb: kyutai's `norm_emb`: every token embedding (both stacks') goes through its own layer norm (eps 1e-5,
            kyutai's `layer_norm`) before the zero token's zeroing.
        depformer_norm: kyutai's `depformer_norm`: the kind (one of NORM_EPS, with its eps) of a norm per codebook on
            the depth transformer's output before that codebook's head; None (kyutai's default): none.
        bias_proj: kyutai's `bias_proj`: the text head and every depth head (`linears.{k}`) have a bias.
        text_card_out: kyutai's `text_card_out`: the text head's width when it differs from text_card (the text
            embeddings keep text_card + 1 rows); None or >= 1. `text_out` is the width either way.
        extra_heads: kyutai's `extra_heads_num_heads`: bias-free linear heads (D -> extra_heads_dim) on the normed
            temporal output (>= 0); kyutai's LMGen.step_with_extra_heads returns their softmax, the LMs return their
            logits beside the text and audio ones.
        extra_heads_dim: kyutai's `extra_heads_dim`: each extra head's width (>= 1; kyutai's default 6).
        existing_text_end_padding_id: kyutai's `existing_text_end_padding_id` (`end_of_text_padding_id`), a text
            token (0 <= id < text_card) that no layer reads: kyutai's fine-tuning recipe weighs it as padding in the
            text loss (`text_padding_ids`).
        demux_second_text_stream: kyutai's `demux_second_text_stream`: a text id is two text streams muxed,
            `(second + 1) * (text_card + 1) + first` (second -1: none), both embedded by the one table and mixed by
            the bias-free linears `out1` (first) and `out2` (second), in the temporal and the depth text embeddings
            alike. Text codes then run over `text_vocab` ids; kyutai refuses it with norm_emb.
        depth_schedule: kyutai's `depformer_weights_per_step_schedule`: dep_q ints >= 0, codebook c using weight set
            depth_schedule[c] of the depth stack (and, with depth_multi_linear, of the input projections); steps
            sharing an entry share weights. None (Moshi-7B): codebook c uses set c. Needs a flexible depth stack.
        depth_multi_linear: kyutai's `depformer_multi_linear`: one temporal -> depth input projection per weight set
            (True, Moshi-7B) or one shared by every step (False).
        depth_low_rank: kyutai's `depformer_low_rank_embeddings`: the depth embeddings are (V + 1, r) tables followed
            by a linear r -> depth.dim (after norm_emb's norm, of width r, and the zero token's zeroing); None
            (Moshi-7B): (V + 1, depth.dim) tables. >= 1.
    """

    temporal: TransformerConfig
    depth: TransformerConfig
    n_q: int = 16
    dep_q: int = 8
    card: int = 2048
    text_card: int = 32000
    delays: tuple[int, ...] = field(default=(0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1))
    existing_text_padding_id: int = 3
    depformer_norm: str | None = None
    norm_emb: bool = False
    bias_proj: bool = False
    text_card_out: int | None = None
    extra_heads: int = 0
    extra_heads_dim: int = 6
    existing_text_end_padding_id: int = 0
    demux_second_text_stream: bool = False
    depth_schedule: tuple[int, ...] | None = None
    depth_multi_linear: bool = True
    depth_low_rank: int | None = None

    def __post_init__(self) -> None:
        """Checks every field, the delays entry by entry, and the two stacks against the LM's sizes.

        Raises:
            ConfigError: a ValueError (a TypeError too when every problem is a wrong type) listing every problem.
        """
        c = Checker(self)
        for name in ("temporal", "depth"):
            if not isinstance(c.value(name), TransformerConfig):
                c.wrong_type(name, "a TransformerConfig")
        for name in ("n_q", "dep_q", "card", "text_card"):
            c.integer(name)
        c.integer("existing_text_padding_id", minimum=0)
        c.integer("existing_text_end_padding_id", minimum=0)
        c.integer("text_card_out", optional=True)
        c.integer("extra_heads", minimum=0)
        c.integer("extra_heads_dim")
        c.integers("delays", minimum=0)
        if self.depformer_norm is not None:
            c.choice("depformer_norm", tuple(NORM_EPS))
        c.flag("norm_emb")
        c.flag("bias_proj")
        c.flag("demux_second_text_stream")
        if c.valid("demux_second_text_stream", "norm_emb"):
            c.require(
                "demux_second_text_stream",
                not (self.demux_second_text_stream and self.norm_emb),
                "demux_second_text_stream has no embedding norm: kyutai's ScaledEmbedding asserts not norm_emb",
            )
        c.flag("depth_multi_linear")
        c.integer("depth_low_rank", optional=True)
        if self.depth_schedule is not None:
            c.integers("depth_schedule", minimum=0)
        n_q, dep_q = self.n_q, self.dep_q
        for name in ("existing_text_padding_id", "existing_text_end_padding_id"):
            if c.valid(name, "text_card"):
                token = getattr(self, name)
                c.require(name, token < self.text_card,
                          f"{name} must be a text token (< text_card {self.text_card}), got {token}")  # fmt: skip
        if c.valid("delays", "n_q"):
            c.require(
                "delays",
                len(self.delays) == 1 + n_q,
                f"delays has {len(self.delays)} entries {self.delays}, expected 1 + n_q = {1 + n_q}",
            )
        if c.valid("n_q", "dep_q"):
            c.require("dep_q", dep_q <= n_q, f"dep_q {dep_q} exceeds n_q {n_q}")
        if c.valid("temporal"):
            c.require(
                "temporal.flexible",
                not self.temporal.flexible,
                "temporal.flexible must be False (the LM runs its temporal layers without layer_idx), got True",
            )
        schedule = self.depth_schedule
        if schedule is not None and c.valid("depth_schedule", "dep_q"):
            c.require(
                "depth_schedule",
                len(schedule) == dep_q,
                f"depth_schedule has {len(schedule)} entries {schedule}, expected one weight set per codebook "
                f"(dep_q = {dep_q})",
            )
        if c.valid("depth") and self.depth.flexible:
            c.require(
                "depth.gated",
                self.depth.gated,
                "depth.gated must be True: kyutai's depformer (a weight set per step) has no plain MLP "
                '(StreamingTransformerLayer asserts gating != "none" with weights_per_step), got False',
            )
            if c.valid("dep_q", "depth_schedule"):
                k, sets = self.depth.num_codebooks, self.depth_sets_count
                why = f"max(depth_schedule {schedule}) + 1 = {sets}" if schedule is not None else f"dep_q {dep_q}"
                c.require("depth.num_codebooks", k == sets, f"depth.num_codebooks {k} must equal {why}")
        elif c.valid("depth"):
            k = self.depth.num_codebooks
            c.require(
                "depth.num_codebooks", k == 1, f"depth.num_codebooks must be 1 when depth.flexible is False, got {k}"
            )
            c.require(
                "depth_schedule",
                schedule is None,
                f"depth_schedule {schedule} needs a flexible depth stack (kyutai: depformer_weights_per_step)",
            )
        c.raise_if_any()

    @property
    def depth_out_norm(self) -> TransformerConfig | None:
        """The depth stack's config with depformer_norm's kind and eps (what one per-codebook output norm reads), or
        None without them."""
        return None if self.depformer_norm is None else self.depth.replace(norm=self.depformer_norm, norm_eps=None)

    @property
    def text_out(self) -> int:
        """The text head's width: text_card_out, else text_card."""
        return self.text_card if self.text_card_out is None else self.text_card_out

    @property
    def text_vocab(self) -> int:
        """How many text ids codes may hold: text_card, or with demux_second_text_stream every muxed pair
        (text_card + 1) * (text_card + 2) (the first stream any of the text_card + 1 rows, the second one of them or
        none)."""
        rows = self.text_card + 1
        return rows * (rows + 1) if self.demux_second_text_stream else self.text_card

    @property
    def text_padding_ids(self) -> tuple[int, ...]:
        """The text ids kyutai's fine-tuning recipe weighs as padding (moshi-finetune's `finetune/loss.py`: the LM's
        end_of_text_padding_id and text_padding_token_id), sorted, for `LossWeights.text_padding_ids`."""
        return tuple(sorted({self.existing_text_end_padding_id, self.existing_text_padding_id}))

    @property
    def depth_sets_count(self) -> int:
        """Weight sets of a flexible depth stack: max(depth_schedule) + 1, or dep_q without a schedule."""
        return self.dep_q if self.depth_schedule is None else max(self.depth_schedule) + 1

    @property
    def depth_sets(self) -> tuple[int, ...] | None:
        """The depth stack's weight set of each codebook (dep_q entries); None when the stack is not flexible."""
        if not self.depth.flexible:
            return None
        return tuple(range(self.dep_q)) if self.depth_schedule is None else self.depth_schedule

    @property
    def depth_in_sets(self) -> tuple[int, ...]:
        """The input projection of each codebook (dep_q entries): its weight set with depth_multi_linear, else 0."""
        if not self.depth_multi_linear:
            return (0,) * self.dep_q
        return tuple(range(self.dep_q)) if self.depth_schedule is None else self.depth_schedule

    @property
    def depth_in_count(self) -> int:
        """Temporal -> depth input projections (kyutai's depformer_in linears)."""
        return max(self.depth_in_sets) + 1

    @property
    def initial_audio_token(self) -> int:
        return self.card

    @property
    def initial_text_token(self) -> int:
        return self.text_card

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    def replace(self, **changes: Any) -> LMConfig:
        return dataclasses.replace(self, **changes)

    def with_norm(self, norm: str) -> LMConfig:
        """Both stacks (and so the final norm) with the norm kind `norm` (kyutai LMModel's `norm=`), each with the
        kind's eps unless it had another one (`TransformerConfig.replace`)."""
        return self.replace(temporal=self.temporal.replace(norm=norm), depth=self.depth.replace(norm=norm))

    def num_params(self) -> int:
        """Parameters of the LM without Mimi, counted as the upstreams lay them out."""
        t, d = self.temporal, self.depth
        emb = (self.text_card + 1) * t.dim + self.n_q * (self.card + 1) * t.dim
        head = t.dim * self.text_out + t.norm_params  # text head + final norm
        head += (self.text_out + self.dep_q * self.card) if self.bias_proj else 0  # the heads' biases
        head += self.extra_heads * self.extra_heads_dim * t.dim
        rank = d.dim if self.depth_low_rank is None else self.depth_low_rank
        demux = 2 * (t.dim**2 + rank * d.dim) if self.demux_second_text_stream else 0  # out1, out2 of both text tables
        depth_emb = (self.text_card + 1) * rank + (self.dep_q - 1) * (self.card + 1) * rank
        depth_emb += 0 if self.depth_low_rank is None else self.dep_q * rank * d.dim  # the r -> Dd projections
        depth_io = self.depth_in_count * t.dim * d.dim + self.dep_q * d.dim * self.card
        out_norms = 0 if self.depth_out_norm is None else self.dep_q * self.depth_out_norm.norm_params
        emb_norms = 2 * ((1 + self.n_q) * t.dim + self.dep_q * rank) if self.norm_emb else 0  # weight and bias each
        return emb + head + t.num_params() + depth_emb + depth_io + d.num_params() + out_norms + emb_norms + demux

    @classmethod
    def tiny(cls, *, context: int | None = 8) -> LMConfig:
        """A few-thousand-parameter model for tests (same structure as 7B)."""
        return cls(
            temporal=TransformerConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, context=context),
            depth=TransformerConfig(
                dim=16, num_heads=2, num_layers=2, ffn_dim=32, rope=False, num_codebooks=4, flexible=True
            ),
            n_q=8,
            dep_q=4,
            card=32,
            text_card=48,
            delays=(0, 0, 1, 1, 1, 0, 1, 1, 1),
        )

    @classmethod
    def small(cls) -> LMConfig:
        """About 340M parameters with full vocabularies: the CPU benchmark preset."""
        return cls(
            temporal=TransformerConfig(
                dim=1024, num_heads=8, num_layers=8, ffn_dim=int(1024 * 4.125 * 2 / 3) * 2, context=3000
            ),
            depth=TransformerConfig(
                dim=512,
                num_heads=8,
                num_layers=4,
                ffn_dim=int(512 * 4.125 * 2 / 3) * 2,
                rope=False,
                num_codebooks=8,
                flexible=True,
            ),
        )

    @classmethod
    def moshi_7b(cls) -> LMConfig:
        """The released Moshi 7B (kyutai `loaders._lm_kwargs`)."""
        return cls(
            temporal=TransformerConfig(dim=4096, num_heads=32, num_layers=32, ffn_dim=22528, context=3000),
            depth=TransformerConfig(
                dim=1024,
                num_heads=16,
                num_layers=6,
                ffn_dim=5632,
                rope=False,
                num_codebooks=8,
                flexible=True,
            ),
        )

    @classmethod
    def preset(cls, name: str) -> LMConfig:
        presets = {"tiny": cls.tiny, "small": cls.small, "moshi_7b": cls.moshi_7b}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(presets)}")
        return presets[name]()
