"""Config dataclasses for Moshi's transformers and LM, with presets traceable to upstream numbers.

Field names follow kyutai where they exist (`n_q`, `dep_q`, `card`, `text_card`, `context`, `delays`). What the two
upstreams take is derived elsewhere: kyutai `LMModel` kwargs and HF `MoshiConfig`s by the harness's adapters
(parity/harness/adapters/kyutai.py, hf.py), and configs are read back from upstream files by converters/lm_config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

ACTIVATIONS = ("silu", "gelu", "relu", "sigmoid", "tanh")
"""Activation names every implementation knows; anything else is an error, never a fallback."""

ZERO_TOKEN = -1
"""kyutai's zero token: a code that embeds to an exact zero vector (no input for that stream at that step) and that
the loss never scores."""

ROPE_LAYOUTS = ("half", "interleaved")
"""`half`: HF's rotate_half, pairs (i, i + D/2). `interleaved`: kyutai's pairs (2i, 2i + 1)."""


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """One stack of pre-norm decoder layers (Moshi's temporal or depth transformer).

    Attributes:
        dim: hidden size D.
        num_heads: query heads H.
        num_layers: decoder layers.
        ffn_dim: output width of the MLP's first linear (HF `ffn_dim`): twice the gated hidden width.
        head_dim: per-head width; defaults to dim // num_heads but may differ (HF allows it, kyutai does not).
        num_kv_heads: key/value heads (grouped-query attention); defaults to num_heads.
        activation: gate activation, one of ACTIVATIONS.
        norm_eps: RMSNorm epsilon (Moshi: 1e-8, inside the square root).
        rope: whether attention applies rotary embeddings (the depth transformer does not).
        rope_theta: rotary base (kyutai `max_period`).
        rope_layout: pairing of rotary dimensions, one of ROPE_LAYOUTS; the weights must be laid out to match.
        context: attention window: query at position p sees keys at p - context < k <= p. None: unbounded.
        num_codebooks: weight sets of the per-codebook ("flexible") linears; 1 for the temporal transformer.
        flexible: whether attention and MLP use one weight set per codebook (the depth transformer).
    """

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    head_dim_override: int | None = None
    num_kv_heads_override: int | None = None
    activation: str = "silu"
    norm_eps: float = 1e-8
    rope: bool = True
    rope_theta: float = 10_000.0
    rope_layout: Literal["half", "interleaved"] = "half"
    context: int | None = None
    num_codebooks: int = 1
    flexible: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"TransformerConfig: {msg}")

        for name in ("dim", "num_heads", "num_layers", "ffn_dim", "num_codebooks"):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(self.ffn_dim % 2 == 0, f"ffn_dim must be even (gate and value halves), got {self.ffn_dim}")
        need(self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}; known: {ACTIVATIONS}")
        need(self.rope_layout in ROPE_LAYOUTS, f"unknown rope_layout {self.rope_layout!r}; known: {ROPE_LAYOUTS}")
        need(self.head_dim % 2 == 0 or not self.rope, f"rope needs an even head_dim, got {self.head_dim}")
        need(
            self.num_heads % self.num_kv_heads == 0,
            f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}",
        )
        need(self.context is None or self.context > 0, f"context must be positive or None, got {self.context}")
        need(self.norm_eps >= 0, f"norm_eps must be >= 0, got {self.norm_eps}")
        need(not self.flexible or self.num_codebooks >= 1, "flexible layers need num_codebooks >= 1")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_kv_heads_override or self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def hidden(self) -> int:
        """Gated hidden width (kyutai's `hidden`, the input width of the MLP's second linear)."""
        return self.ffn_dim // 2

    @property
    def weight_sets(self) -> int:
        """Weight sets per linear: num_codebooks when flexible, else 1."""
        return self.num_codebooks if self.flexible else 1

    def replace(self, **changes: Any) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameters of the layer stack (no embeddings, no final norm)."""
        attn = self.dim * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.dim
        mlp = self.dim * self.ffn_dim + self.hidden * self.dim
        return self.num_layers * (self.weight_sets * (attn + mlp) + 2 * self.dim)


@dataclass(frozen=True, kw_only=True)
class LMConfig:
    """The Moshi LM: a temporal transformer over frames and a depth transformer over codebooks.

    Attributes:
        temporal: the temporal transformer (rope, context window).
        depth: the depth transformer (no positional encoding, one weight set per codebook, no context window: kyutai's
            LMModel overrides depformer_context with None).
        n_q: audio streams fed to the temporal transformer (Moshi's dep_q and the user's).
        dep_q: audio codebooks Moshi predicts (depth steps after the text step).
        card: audio codebook size; id `card` is the initial audio token.
        text_card: text vocabulary size; id `text_card` is the initial text token.
        delays: per-stream delays, text first (1 + n_q entries).
        existing_text_padding_id: kyutai's text padding id.
    """

    temporal: TransformerConfig
    depth: TransformerConfig
    n_q: int = 16
    dep_q: int = 8
    card: int = 2048
    text_card: int = 32000
    delays: tuple[int, ...] = field(default=(0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1))
    existing_text_padding_id: int = 3

    def __post_init__(self) -> None:
        if len(self.delays) != 1 + self.n_q:
            raise ValueError(f"LMConfig: delays has {len(self.delays)} entries, expected 1 + n_q = {1 + self.n_q}")
        if self.dep_q > self.n_q:
            raise ValueError(f"LMConfig: dep_q {self.dep_q} exceeds n_q {self.n_q}")
        if not self.depth.flexible or self.depth.num_codebooks != self.dep_q:
            raise ValueError(
                f"LMConfig: depth must be flexible with num_codebooks == dep_q ({self.dep_q}), "
                f"got flexible={self.depth.flexible}, num_codebooks={self.depth.num_codebooks}"
            )

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

    def num_params(self) -> int:
        """Parameters of the LM without Mimi, counted as the upstreams lay them out."""
        t, d = self.temporal, self.depth
        emb = (self.text_card + 1) * t.dim + self.n_q * (self.card + 1) * t.dim
        head = t.dim * self.text_card + t.dim  # text head + final norm
        depth_emb = (self.text_card + 1) * d.dim + (self.dep_q - 1) * (self.card + 1) * d.dim
        depth_io = self.dep_q * (t.dim * d.dim + d.dim * self.card)
        return emb + head + t.num_params() + depth_emb + depth_io + d.num_params()

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
