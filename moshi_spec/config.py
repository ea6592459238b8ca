"""The Moshi LM's config (its two stacks: moshi_spec/transformer.py), with presets traceable to upstream numbers.

Field names follow kyutai where they exist (`n_q`, `dep_q`, `card`, `text_card`, `context`, `delays`). What the two
upstreams take is derived elsewhere: kyutai `LMModel` kwargs and HF `MoshiConfig`s by the harness's adapters
(parity/harness/adapters/kyutai.py, hf.py), and configs are read back from upstream files by converters/lm_config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from moshi_spec.transformer import ACTIVATIONS, NORM_EPS, ROPE_LAYOUTS, TransformerConfig
from moshi_spec.validation import Checker

__all__ = [
    "ACTIVATIONS",
    "NORM_EPS",
    "ROPE_LAYOUTS",
    "ZERO_TOKEN",
    "LMConfig",
    "TransformerConfig",
]  # the stack's, re-exported

ZERO_TOKEN = -1
"""kyutai's zero token: a code that embeds to an exact zero vector (no input for that stream at that step) and that
the loss never scores."""


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
