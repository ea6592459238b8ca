"""The MLPs of kyutai's layers: GatingMLP (fc1 -> (act(gate) * value) -> fc2; the first half of fc1's output is the
gate: HF fc1/fc2, kyutai gating.linear_in/linear_out) and PlainMLP (fc1 -> act -> fc2: kyutai's gating="none",
linear1/linear2); `make_mlp` picks one by the config's `gated`."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.activations import get_activation
from models_ref.linear import make_linear
from moshi_spec import TransformerConfig


class GatingMLP(nn.Module):
    """fc1 (ffn_dim, D), fc2 (D, ffn_dim / 2); one weight set per codebook when cfg.flexible."""

    def __init__(self, cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.activation_name = cfg.activation
        self.activation = get_activation(cfg.activation)
        self.hidden = cfg.hidden
        self.fc1 = make_linear(cfg.dim, cfg.ffn_dim, cfg.weight_sets, flexible=cfg.flexible, dtype=dtype)
        self.fc2 = make_linear(cfg.hidden, cfg.dim, cfg.weight_sets, flexible=cfg.flexible, dtype=dtype)

    def forward(self, x: torch.Tensor, *, layer_idx: object = None) -> torch.Tensor:
        h = self.fc1(x, layer_idx=layer_idx)
        gate, value = h[..., : self.hidden], h[..., self.hidden :]
        # The activation is evaluated in float32 and rounded once (what torch does internally for bf16 tensors).
        gated = self.activation(gate.float()).to(gate.dtype) * value
        return self.fc2(gated, layer_idx=layer_idx)


class PlainMLP(nn.Module):
    """fc1 (ffn_dim, D), fc2 (D, ffn_dim), no bias: fc2(act(fc1(x))) with the config's activation (kyutai: exact gelu);
    one weight set per codebook when cfg.flexible.

    The activation is evaluated in float32 and rounded once (what torch does inside F.gelu for bfloat16 tensors).
    """

    def __init__(self, cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.activation_name = cfg.activation
        self.activation = get_activation(cfg.activation)
        self.fc1 = make_linear(cfg.dim, cfg.ffn_dim, cfg.weight_sets, flexible=cfg.flexible, dtype=dtype)
        self.fc2 = make_linear(cfg.ffn_dim, cfg.dim, cfg.weight_sets, flexible=cfg.flexible, dtype=dtype)

    def forward(self, x: torch.Tensor, *, layer_idx: object = None) -> torch.Tensor:
        h = self.fc1(x, layer_idx=layer_idx)
        return self.fc2(self.activation(h.float()).to(h.dtype), layer_idx=layer_idx)


def make_mlp(cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """cfg's MLP: GatingMLP when cfg.gated, else PlainMLP."""
    return GatingMLP(cfg, dtype=dtype) if cfg.gated else PlainMLP(cfg, dtype=dtype)
