"""Token embedding whose id -1 (kyutai's zero token) embeds to an exact zero vector, optionally through a layer norm
(kyutai's `norm_emb`) or demuxing two streams muxed in one id (kyutai's `demux_second_stream`)."""

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

    demux=True (kyutai's demux_second_stream): an id is `(second + 1) * V + first`, ids in [0, V * (V + 1)); it
    embeds to out1(weight[first]) + out2(weight[second]), the second term 0 when second is -1 (kyutai's ScaledEmbedding:
    the same table, two bias-free linears (width, D)). No norm with it (kyutai asserts). With low_rank too, the out
    linears map r -> D and `low_rank` is unused (kyutai creates it and applies it only without demux).

    low_rank=r (kyutai's depformer_low_rank_embeddings): weight (V, r), the norm (if any) of width r, and after the
    zeroing a bias-free linear `low_rank` (D, r) up to D, as kyutai's ScaledEmbedding orders them."""

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        norm: bool = False,
        demux: bool = False,
        low_rank: int | None = None,
    ):
        super().__init__()
        check_dtype("Embedding", dtype)
        if demux and norm:
            raise ValueError("Embedding: demux has no norm (kyutai's ScaledEmbedding asserts not norm)")
        self.num_embeddings = num_embeddings
        width = dim if low_rank is None else low_rank
        self.weight = nn.Parameter(torch.randn(num_embeddings, width, dtype=dtype))
        self.norm = LayerNorm(width, eps=EMB_NORM_EPS, dtype=dtype) if norm else None
        self.demux = demux
        if demux:
            self.out1, self.out2 = Linear(width, dim, dtype=dtype), Linear(width, dim, dtype=dtype)
        self.low_rank = None if low_rank is None else Linear(low_rank, dim, dtype=dtype)

    @property
    def vocab(self) -> int:
        """How many ids the embedding takes (besides ZERO_TOKEN): the rows, or every muxed pair with demux."""
        v = self.num_embeddings
        return v * (v + 1) if self.demux else v

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_int_tensor("Embedding", "ids", ids, "(...)")
        ids = check_ids("Embedding", "ids", ids, vocab=self.vocab)
        is_zero = (ids == ZERO_TOKEN)[..., None]
        zero = torch.zeros((), dtype=self.weight.dtype)
        if self.demux:
            first, second = ids.clamp(min=0) % self.num_embeddings, ids.clamp(min=0) // self.num_embeddings - 1
            y = self.out1(self.weight[first]) + torch.where(
                (second < 0)[..., None], zero, self.out2(self.weight[second.clamp(min=0)])
            )
            return torch.where(is_zero, zero, y)
        rows = self.weight[ids.clamp(min=0)]
        if self.norm is not None:  # LayerNorm takes (B, T, D)
            rows = self.norm(rows.reshape(-1, 1, rows.shape[-1])).reshape(rows.shape)
        rows = torch.where(is_zero, zero, rows)
        return rows if self.low_rank is None else self.low_rank(rows)
