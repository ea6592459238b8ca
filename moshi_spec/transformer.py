"""The config of one stack of Moshi's decoder layers (the temporal or the depth transformer, Mimi's too), and the names
every implementation knows (activations, rope layouts, kyutai's norm kinds). moshi_spec/config.py builds the LM's
config from two of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from moshi_spec.validation import Checker

ACTIVATIONS = ("silu", "gelu", "relu", "sigmoid", "tanh")
"""Activation names every implementation knows; anything else is an error, never a fallback."""

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
