"""Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(.))."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.attention import Attention
from models_ref.cache import KVCache
from models_ref.mlp import GatingMLP
from models_ref.norm import make_norm
from moshi_spec import TransformerConfig


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.input_layernorm = make_norm(cfg, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype)
        self.post_attention_layernorm = make_norm(cfg, dtype=dtype)
        self.mlp = GatingMLP(cfg, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        layer_idx: object = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        update, cache = self.self_attn(self.input_layernorm(x), positions=positions, layer_idx=layer_idx, cache=cache)
        x = x + update
        x = x + self.mlp(self.post_attention_layernorm(x), layer_idx=layer_idx)
        return x, cache
