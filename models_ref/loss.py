"""Training loss of the LM: text + audio cross entropy over the valid positions, per-codebook weights.

Invalid positions (the delay pattern's tail, zero tokens) are excluded through the output's masks; a label outside its
vocabulary at a valid position is an error, never silently dropped.
"""

from __future__ import annotations

import torch

from models_ref.lm import LMOutput


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """Mean cross entropy of (N, C) logits against (N,) labels over mask; 0 when nothing is valid."""
    vocab = logits.shape[-1]
    bad = mask & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"loss: {int(bad.sum())} {name} label(s) outside [0, {vocab}) at valid positions")
    logp = torch.log_softmax(torch.where(mask[:, None], logits.float(), 0.0), dim=-1)
    nll = -logp.gather(-1, torch.where(mask, labels, 0)[:, None])[:, 0]
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def lm_loss(
    out: LMOutput, codes: torch.Tensor, *, text_weight: float = 1.0, audio_weights: tuple[float, ...] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (text_weight * text CE + weighted mean of the per-codebook audio CEs, the parts)."""
    dep_q = out.audio_logits.shape[1]
    weights = torch.tensor(audio_weights if audio_weights is not None else (1.0,) * dep_q, dtype=torch.float32)
    if weights.shape != (dep_q,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"loss: audio_weights must be {dep_q} non-negative numbers with a positive sum, got {weights}")
    text = _masked_ce(out.text_logits[:, 0].flatten(0, 1), codes[:, 0].flatten(), out.text_mask[:, 0].flatten(), "text")
    audio = torch.stack(
        [
            _masked_ce(
                out.audio_logits[:, k].flatten(0, 1), codes[:, 1 + k].flatten(), out.audio_mask[:, k].flatten(), "audio"
            )
            for k in range(dep_q)
        ]
    )
    total = text_weight * text + (weights * audio).sum() / weights.sum()
    return total, {"text": text, "audio": audio}
