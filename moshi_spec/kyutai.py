"""kyutai's own arithmetic on Moshi's sizes, shared by the converters' config readers and the upstream builders.

Framework-neutral: imports neither torch nor jax.
"""

from __future__ import annotations

from typing import Any


def gating_hidden(dim: int, dim_feedforward: int) -> int:
    """kyutai `ActivationGating`'s hidden width (the input width of `linear_out`; `linear_in` has twice as many rows).

    kyutai replaces the exact 8/3 ratio by 21/8 when dim_feedforward is the default 4 * dim
    (`moshi.modules.gating.ActivationGating.__init__`).
    """
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


def dim_feedforward(dim: int, hidden: int) -> int:
    """The kyutai dim_feedforward whose gating hidden width is `hidden` (inverse of `gating_hidden`).

    Raises:
        ValueError: no dim_feedforward gives this hidden width for this dim.
    """
    # (2 * dff) // 3 == hidden has its solutions among these three; trying them in this order keeps the answer stable.
    for dff in ((3 * hidden + 1) // 2, (3 * hidden) // 2, (3 * hidden + 2) // 2):
        if gating_hidden(dim, dff) == hidden:
            return dff
    raise ValueError(f"kyutai cannot express a gated hidden width of {hidden} for dim {dim}")


def positional_embedding(stack: Any) -> str:
    """The kyutai `positional_embedding` (LMModel's `depformer_pos_emb` for the depth stack) of a TransformerConfig:
    rope, rope_concat (rope with kyutai's half-split checkpoint layout), sin, sin_rope or none."""
    if stack.rope:
        return "sin_rope" if stack.sin_embedding else "rope_concat" if stack.rope_concat else "rope"
    return "sin" if stack.sin_embedding else "none"
