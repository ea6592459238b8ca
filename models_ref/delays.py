"""kyutai's delay pattern: stream k is shifted right by delays[k] steps (the first steps filled with its initial token)
for the model's input, and the logits are shifted back, with the last delays[k] steps invalid."""

from __future__ import annotations

import torch


def delay(codes: torch.Tensor, delays: tuple[int, ...], initial: torch.Tensor) -> torch.Tensor:
    """codes (B, K, T), initial (K,) -> (B, K, T) with stream k shifted right by delays[k]."""
    out = codes.clone()
    for k, d in enumerate(delays):
        if d:
            out[:, k, d:] = codes[:, k, :-d]
            out[:, k, :d] = initial[k]
    return out


def undelay(logits: torch.Tensor, delays: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, K, T, C) -> (aligned logits with NaN where invalid, mask (B, K, T) of valid positions)."""
    batch, streams, length = logits.shape[:3]
    out = torch.full_like(logits, float("nan"))
    mask = torch.zeros(batch, streams, length, dtype=torch.bool)
    for k, d in enumerate(delays):
        out[:, k, : length - d] = logits[:, k, d:]
        mask[:, k, : length - d] = True
    return out, mask
