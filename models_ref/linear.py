"""FlexibleLinear: one weight matrix per codebook, selected per position (HF `MoshiFlexibleLinear`)."""

from __future__ import annotations

import torch
from torch import nn

from models_ref.checks import check_dtype, check_input


def select_weights(weight: torch.Tensor, seq_len: int, layer_idx: object) -> torch.Tensor:
    """Returns the (S', out, in) weights applied to the S input positions (S' == S, or S' == L broadcasting S == 1).

    layer_idx modes:
        None: position i uses weight[i]; S must equal num_layers.
        Python int or 0-d integer tensor: one weight for all positions.
        1-D integer tensor of length S: position i uses weight[idx[i]].
        1-D integer tensor of length L with S == 1: the one input goes through L matrices (L outputs).
    """
    num_layers = weight.shape[0]
    if layer_idx is None:
        if seq_len != num_layers:
            raise ValueError(
                f"FlexibleLinear: layer_idx=None needs sequence length S == num_layers ({num_layers}), "
                f"got S={seq_len}; "
                "pass layer_idx to select weights explicitly"
            )
        return weight
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, int | torch.Tensor):
        raise TypeError(f"FlexibleLinear: layer_idx must be None, an int or an integer tensor, got {layer_idx!r}")
    idx = torch.as_tensor(layer_idx, device=weight.device)
    if idx.dtype not in (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"FlexibleLinear: layer_idx must be integer, got dtype {idx.dtype}")
    if idx.dim() > 1:
        raise ValueError(f"FlexibleLinear: layer_idx must be 0-d or 1-D, got shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_layers):
        raise ValueError(
            f"FlexibleLinear: layer_idx out of range [0, {num_layers}): min {int(idx.min())}, max {int(idx.max())}"
        )
    if idx.dim() == 0:
        return weight[idx.long()][None]
    if idx.shape[0] != seq_len and seq_len != 1:
        raise ValueError(
            f"FlexibleLinear: 1-D layer_idx of length {idx.shape[0]} needs S == {idx.shape[0]} or S == 1, "
            f"got S={seq_len}"
        )
    return weight[idx.long()]


class FlexibleLinear(nn.Module):
    """weight (L, out, in), bias (L, out) when `bias` (kyutai's bias_proj heads); `forward(x (B, S, in), *,
    layer_idx)` -> (B, S', out), each position's bias selected with its weight."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_layers: int,
        *,
        dtype: torch.dtype = torch.float32,
        bias: bool = False,
    ):
        super().__init__()
        check_dtype("FlexibleLinear", dtype)
        self.in_features, self.out_features, self.num_layers = in_features, out_features, num_layers
        self.weight = nn.Parameter(torch.randn(num_layers, out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.randn(num_layers, out_features, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor, *, layer_idx: object = None) -> torch.Tensor:
        check_input("FlexibleLinear", x, rank=3, last=self.in_features, dtype=self.weight.dtype)
        w = select_weights(self.weight, x.shape[1], layer_idx)
        b = None if self.bias is None else select_weights(self.bias, x.shape[1], layer_idx)  # (S' or 1, out)
        if w.shape[0] == 1:  # one weight for every position (int / 0-d index, or num_layers == 1)
            return nn.functional.linear(x, w[0], None if b is None else b[0])
        # (B, S, in) x (S', out, in) -> (B, S', out); an S == 1 input broadcasts over the S' = L weights.
        y = torch.einsum("bsi,soi->bso", x.expand(-1, w.shape[0], -1), w)
        return y if b is None else y + b


class Linear(nn.Linear):
    """Linear (bias-free unless `bias`) that takes (and ignores only when None) layer_idx, so callers treat both kinds
    alike."""

    def __init__(self, in_features: int, out_features: int, *, dtype: torch.dtype = torch.float32, bias: bool = False):
        check_dtype("Linear", dtype)
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)

    def forward(self, x: torch.Tensor, *, layer_idx: object = None) -> torch.Tensor:  # type: ignore[override]
        if layer_idx is not None:
            raise ValueError("Linear: layer_idx given to a layer with a single weight set (not flexible)")
        check_input("Linear", x, rank=x.dim() if x.dim() >= 2 else 2, last=self.in_features, dtype=self.weight.dtype)
        return super().forward(x)


def make_linear(in_features: int, out_features: int, weight_sets: int, *, flexible: bool, dtype: torch.dtype):
    """A FlexibleLinear with weight_sets matrices when flexible, else a plain Linear."""
    if flexible:
        return FlexibleLinear(in_features, out_features, weight_sets, dtype=dtype)
    return Linear(in_features, out_features, dtype=dtype)
