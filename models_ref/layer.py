"""Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(.)); each update through a LayerScale when the config
has kyutai's layer_scale."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.attention import Attention
from models_ref.cache import KVCache
from models_ref.layer_scale import LayerScale
from models_ref.mlp import make_mlp
from models_ref.norm import make_norm
from moshi_spec import TransformerConfig


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.input_layernorm = make_norm(cfg, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype)
        self.post_attention_layernorm = make_norm(cfg, dtype=dtype)
        self.mlp = make_mlp(cfg, dtype=dtype)
        scale = cfg.layer_scale  # kyutai's layer_scale_1 / layer_scale_2 (absent: None)
        self.self_attn_layer_scale = None if scale is None else LayerScale(cfg.dim, init=scale, dtype=dtype)
        self.mlp_layer_scale = None if scale is None else LayerScale(cfg.dim, init=scale, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        layer_idx: object = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        update, cache = self.self_attn(self.input_layernorm(x), positions=positions, layer_idx=layer_idx, cache=cache)
        x = x + _scaled(self.self_attn_layer_scale, update)
        x = x + _scaled(self.mlp_layer_scale, self.mlp(self.post_attention_layernorm(x), layer_idx=layer_idx))
        return x, cache


def _scaled(layer_scale: LayerScale | None, update: torch.Tensor) -> torch.Tensor:
    return update if layer_scale is None else layer_scale(update)
