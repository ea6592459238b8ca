"""Mimi's transformers (kyutai `ProjectedTransformer` around `StreamingTransformer` with norm="layer_norm",
gating="none", layer_scale, interleaved rope, causal attention over a context window; the projections are identities).

Channels-last (B, T, D) inside; MimiModel transposes SEANet's (B, D, T) in and out. Attention is the shared
models_ref.attention.Attention (q_proj/k_proj/v_proj/o_proj: kyutai's fused in_projs.0 split in three rows blocks).
Streaming keeps one KVCache ring per layer and the running position of every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models_ref.attention import Attention
from models_ref.cache import KVCache
from models_ref.checks import check_input
from models_ref.layer_scale import LayerScale
from models_ref.mlp import PlainMLP
from models_ref.norm import LayerNorm
from moshi_spec import TransformerConfig


class MimiTransformerLayer(nn.Module):
    """Pre-norm layer: x + layer_scale_1(attn(norm1(x))), then + layer_scale_2(mlp(norm2(.)))."""

    def __init__(self, cfg: TransformerConfig, *, layer_scale: float = 0.01, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.norm_eps, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype)
        self.layer_scale_1 = LayerScale(cfg.dim, init=layer_scale, dtype=dtype)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.norm_eps, dtype=dtype)
        self.mlp = PlainMLP(cfg, dtype=dtype)
        self.layer_scale_2 = LayerScale(cfg.dim, init=layer_scale, dtype=dtype)

    def forward(
        self, x: torch.Tensor, *, positions: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache | None]:
        update, cache = self.self_attn(self.norm1(x), positions=positions, cache=cache)
        x = x + self.layer_scale_1(update)
        x = x + self.layer_scale_2(self.mlp(self.norm2(x)))
        return x, cache


@dataclass(frozen=True)
class TransformerState:
    """Streaming state of a MimiTransformer.

    Attributes:
        caches: one KVCache ring per layer, capacity context + max_chunk - 1 (positions -1 where empty).
        offsets: (B,) int64, the position of each row's next step.
    """

    caches: tuple[KVCache, ...]
    offsets: torch.Tensor


class MimiTransformer(nn.Module):
    """A stack of MimiTransformerLayer over (B, T, D) inputs at positions (B, T)."""

    def __init__(self, cfg: TransformerConfig, *, layer_scale: float = 0.01, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"MimiTransformer: cfg must be a TransformerConfig, got {type(cfg).__name__}")
        if cfg.flexible:
            raise ValueError("MimiTransformer: cfg.flexible must be False (one weight set per linear)")
        self.cfg = cfg
        self.dtype = dtype
        self.layers = nn.ModuleList(
            [MimiTransformerLayer(cfg, layer_scale=layer_scale, dtype=dtype) for _ in range(cfg.num_layers)]
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        caches: tuple[KVCache, ...] | None = None,
        capture: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[KVCache, ...] | None]:
        """x (B, T, D) at positions (B, T) -> (y (B, T, D), updated caches or None).

        capture: when given, each layer's output (B, T, D) is appended to it.
        """
        check_input("MimiTransformer", x, rank=3, last=self.cfg.dim, dtype=self.dtype)
        if caches is not None and len(caches) != len(self.layers):
            raise ValueError(f"MimiTransformer: {len(caches)} caches for {len(self.layers)} layers")
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer(x, positions=positions, cache=None if caches is None else caches[i])
            new_caches.append(cache)
            if capture is not None:
                capture.append(x)
        return x, None if caches is None else tuple(new_caches)

    def max_chunk(self, state: TransformerState) -> int:
        """Steps one call may take against the state's caches and still see its whole context window."""
        return state.caches[0].capacity - self._context() + 1

    def _context(self) -> int:
        if self.cfg.context is None:
            raise ValueError("MimiTransformer: streaming needs a finite cfg.context (the KV ring's size)")
        return self.cfg.context

    def init_state(self, batch: int, *, max_chunk: int = 1) -> TransformerState:
        """Empty KV rings of capacity context + max_chunk - 1 (one call of up to max_chunk steps is exact; longer
        inputs are split by `step`), offsets 0."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"MimiTransformer: batch must be an int >= 1, got {batch!r}")
        if isinstance(max_chunk, bool) or not isinstance(max_chunk, int) or max_chunk < 1:
            raise ValueError(f"MimiTransformer: max_chunk must be an int >= 1, got {max_chunk!r}")
        cfg = self.cfg
        capacity = self._context() + max_chunk - 1
        caches = tuple(
            KVCache.init(batch, capacity, cfg.num_kv_heads, cfg.head_dim, dtype=self.dtype) for _ in self.layers
        )
        return TransformerState(caches, torch.zeros(batch, dtype=torch.long))

    def step(
        self, x: torch.Tensor, state: TransformerState, *, capture: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, TransformerState]:
        """x (B, T, D), T >= 1: the next T steps of every row -> (y (B, T, D), new state); equals `forward` over the
        whole stream. Inputs longer than the state's max_chunk go through in consecutive pieces."""
        check_input("MimiTransformer.step", x, rank=3, last=self.cfg.dim, dtype=self.dtype)
        batch, length = x.shape[:2]
        if batch != state.offsets.shape[0]:
            raise ValueError(
                f"MimiTransformer.step: input batch {batch} (shape {tuple(x.shape)}) differs from the state's "
                f"{state.offsets.shape[0]}"
            )
        if length < 1:
            raise ValueError(f"MimiTransformer.step: T must be >= 1, got shape {tuple(x.shape)}")
        chunk = self.max_chunk(state)
        caches, offsets = state.caches, state.offsets
        outputs = []
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.layers]
        for start in range(0, length, chunk):
            piece = x[:, start : start + chunk]
            positions = offsets[:, None] + torch.arange(piece.shape[1])
            layer_outputs: list[torch.Tensor] | None = [] if capture is not None else None
            y, new_caches = self.forward(piece, positions=positions, caches=caches, capture=layer_outputs)
            assert new_caches is not None
            caches, offsets = new_caches, offsets + piece.shape[1]
            outputs.append(y)
            for i, out in enumerate(layer_outputs or []):
                per_layer[i].append(out)
        if capture is not None:
            capture.extend(torch.cat(outs, dim=1) for outs in per_layer)
        return torch.cat(outputs, dim=1), TransformerState(caches, offsets)
