"""Multi-head attention: q/k/v/o projections (optionally per codebook), rope, causal mask with an optional context
window, float32 softmax, grouped key/value heads and a KV ring cache."""

from __future__ import annotations

import math

import torch
from torch import nn

from models_ref.cache import KVCache
from models_ref.checks import check_positions
from models_ref.linear import make_linear
from models_ref.rope import RotaryEmbedding
from moshi_spec import TransformerConfig
from moshi_spec.checks import check_cache_capacity


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, context: int | None) -> torch.Tensor:
    """(B, T) query and (B, S) key positions -> (B, T, S) bool: key valid, not in the future, within the context."""
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask = mask & (delta < context)
    return mask


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (B, T, H, D), k/v (B, S, Hkv, D), mask (B, T, S) -> (B, T, H, D); scores and softmax in float32."""
    batch, length, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    q = q.unflatten(2, (k.shape[2], groups))  # head h uses key/value head h // groups
    scores = torch.einsum("btkgd,bskd->bkgts", q.float(), k.float()) / math.sqrt(head_dim)
    scores = scores.masked_fill(~mask[:, None, None], torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bkgts,bskd->btkgd", probs.to(v.dtype).float(), v.float())
    return out.to(q.dtype).reshape(batch, length, heads, head_dim)


class Attention(nn.Module):
    """Self-attention over (B, T, D) inputs at positions (B, T)."""

    def __init__(self, cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        sets, flex = cfg.weight_sets, cfg.flexible
        self.q_proj = make_linear(cfg.dim, cfg.q_dim, sets, flexible=flex, dtype=dtype)
        self.k_proj = make_linear(cfg.dim, cfg.kv_dim, sets, flexible=flex, dtype=dtype)
        self.v_proj = make_linear(cfg.dim, cfg.kv_dim, sets, flexible=flex, dtype=dtype)
        self.o_proj = make_linear(cfg.q_dim, cfg.dim, sets, flexible=flex, dtype=dtype)
        self.rotary_emb = (
            RotaryEmbedding(cfg.head_dim, theta=cfg.rope_theta, layout=cfg.rope_layout) if cfg.rope else None
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        layer_idx: object = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        cfg = self.cfg
        if x.dim() != 3:
            raise ValueError(f"Attention: expected (B, T, {cfg.dim}), got {tuple(x.shape)}")
        check_positions("Attention", positions, x.shape[0], x.shape[1])
        q = self.q_proj(x, layer_idx=layer_idx).unflatten(-1, (cfg.num_heads, cfg.head_dim))
        k = self.k_proj(x, layer_idx=layer_idx).unflatten(-1, (cfg.num_kv_heads, cfg.head_dim))
        v = self.v_proj(x, layer_idx=layer_idx).unflatten(-1, (cfg.num_kv_heads, cfg.head_dim))
        if q.shape[1] != positions.shape[1]:
            raise ValueError(
                f"Attention: layer_idx broadcast to {q.shape[1]} positions, positions has {positions.shape[1]}"
            )
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(q, positions=positions), self.rotary_emb(k, positions=positions)
        if cache is not None:
            check_cache_capacity(cache.capacity, x.shape[1], cfg.context)
            cache = cache.update(k, v, positions)
            k, v, k_pos = cache.keys, cache.values, cache.positions
        else:
            k_pos = positions
        out = dot_product_attention(q, k, v, attention_mask(positions, k_pos, cfg.context))
        return self.o_proj(out.flatten(-2), layer_idx=layer_idx), cache
