"""Token embedding whose id -1 (kyutai's zero token) embeds to an exact zero vector, optionally through a layer norm
(kyutai's `norm_emb`)."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.checks import check_dtype, check_ids, check_int_tensor
from models_ref.linear import Linear
from models_ref.norm import LayerNorm
from moshi_spec import NORM_EPS, ZERO_TOKEN

EMB_NORM_EPS = NORM_EPS["layer_norm"]
"""kyutai's norm_emb is always a `layer_norm` (ScaledEmbedding: create_norm_fn("layer_norm", dim))."""


class Embedding(nn.Module):
    """weight (V, D); ids in [0, V) or ZERO_TOKEN; anything else is an error (never clamped).

    norm=True (kyutai's norm_emb): each row goes through `norm`, a LayerNorm (eps 1e-5, kyutai's layer_norm), before
    the zero token is zeroed.

    low_rank=r (kyutai's depformer_low_rank_embeddings): weight (V, r), the norm (if any) of width r, and after the
    zeroing a bias-free linear `low_rank` (D, r) up to D, as kyutai's ScaledEmbedding orders them."""

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        norm: bool = False,
        low_rank: int | None = None,
    ):
        super().__init__()
        check_dtype("Embedding", dtype)
        self.num_embeddings = num_embeddings
        width = dim if low_rank is None else low_rank
        self.weight = nn.Parameter(torch.randn(num_embeddings, width, dtype=dtype))
        self.norm = LayerNorm(width, eps=EMB_NORM_EPS, dtype=dtype) if norm else None
        self.low_rank = None if low_rank is None else Linear(low_rank, dim, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_int_tensor("Embedding", "ids", ids, "(...)")
        ids = check_ids("Embedding", "ids", ids, vocab=self.num_embeddings)
        is_zero = (ids == ZERO_TOKEN)[..., None]
        rows = self.weight[ids.clamp(min=0)]
        if self.norm is not None:  # LayerNorm takes (B, T, D)
            rows = self.norm(rows.reshape(-1, 1, rows.shape[-1])).reshape(rows.shape)
        rows = torch.where(is_zero, torch.zeros((), dtype=self.weight.dtype), rows)
        return rows if self.low_rank is None else self.low_rank(rows)
