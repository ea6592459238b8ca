"""Token embedding whose id -1 (kyutai's zero token) embeds to an exact zero vector."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.checks import check_dtype, check_ids, check_int_tensor
from moshi_spec import ZERO_TOKEN


class Embedding(nn.Module):
    """weight (V, D); ids in [0, V) or ZERO_TOKEN; anything else is an error (never clamped)."""

    def __init__(self, num_embeddings: int, dim: int, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_dtype("Embedding", dtype)
        self.num_embeddings = num_embeddings
        self.weight = nn.Parameter(torch.randn(num_embeddings, dim, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_int_tensor("Embedding", "ids", ids, "(...)")
        ids = check_ids("Embedding", "ids", ids, vocab=self.num_embeddings)
        is_zero = (ids == ZERO_TOKEN)[..., None]
        return torch.where(is_zero, torch.zeros((), dtype=self.weight.dtype), self.weight[ids.clamp(min=0)])
