"""Training loss of the LM, kyutai's fine-tuning recipe: text + audio cross entropy, each a weighted mean over its
stream's valid positions normalised by the sum of its weights (the weights: moshi_spec/loss.py).

Invalid positions (the delay pattern's tail, zero tokens) are excluded through the output's masks; a label outside its
vocabulary at a valid position is an error, never silently dropped. Logits of any dtype are read in float32.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from models_ref.lm import LMOutput
from moshi_spec.loss import LossWeights


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """(..., C) logits, (...) labels and mask -> (...) float32 negative log-likelihood at the mask, 0 elsewhere."""
    vocab = logits.shape[-1]
    bad = mask & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"loss: {int(bad.sum())} {name} label(s) outside [0, {vocab}) at valid positions")
    logp = torch.log_softmax(torch.where(mask[..., None], logits.float(), 0.0), dim=-1)
    nll = -logp.gather(-1, torch.where(mask, labels, 0)[..., None])[..., 0]
    return torch.where(mask, nll, 0.0)


def _text_weights(
    mask: torch.Tensor, labels: torch.Tensor, *, padding_ids: tuple[int, ...], padding_weight: float
) -> torch.Tensor:
    """(B, 1, T) float32: padding_weight where the label is a padding id, 1 elsewhere, 0 outside the mask."""
    padding = torch.isin(labels, torch.tensor(padding_ids, dtype=labels.dtype))
    return torch.where(mask, torch.where(padding, padding_weight, 1.0), 0.0)


def _audio_weights(mask: torch.Tensor, codebook_weights: tuple[float, ...]) -> torch.Tensor:
    """(B, K, T) float32: codebook k's weight at its valid positions, 0 elsewhere."""
    return torch.where(mask, torch.tensor(codebook_weights, dtype=torch.float32)[:, None], 0.0)


def _weighted_mean(nll: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(weights * nll) / sum(weights); 0 when the weights sum to 0 (nothing to score)."""
    total = weights.sum()
    return torch.where(total > 0, (weights * nll).sum() / torch.where(total > 0, total, 1.0), 0.0)


def lm_loss(
    out: LMOutput,
    codes: torch.Tensor,
    *,
    text_weight: float = 1.0,
    audio_weights: tuple[float, ...] | None = None,
    first_codebook_weight_multiplier: float = 1.0,
    text_padding_weight: float = 1.0,
    text_padding_ids: Iterable[int] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of an LM output against codes (B, 1 + n_q, T), text first (the labels: usually the codes the
    output was computed from); the arguments are `moshi_spec.loss.LossWeights`' (defaults: plain cross entropy).

    Returns:
        (text_weight * text + audio, parts): parts "text" and "audio" (the two weighted means) and
        "audio_per_codebook" (dep_q,) (each codebook's unweighted mean, for monitoring).

    Raises:
        ValueError: a bad weight (naming it and its value) or a label outside its vocabulary at a valid position.
    """
    weights = LossWeights(
        text_weight=text_weight,
        audio_weights=audio_weights,
        first_codebook_weight_multiplier=first_codebook_weight_multiplier,
        text_padding_weight=text_padding_weight,
        text_padding_ids=text_padding_ids,
    )
    dep_q = out.audio_logits.shape[1]
    codebook_weights = weights.codebook_weights(dep_q)
    padding_ids = weights.padding_ids(out.text_logits.shape[-1])
    text_labels, audio_labels = codes[:, :1], codes[:, 1 : 1 + dep_q]
    text_nll = _cross_entropy(out.text_logits, text_labels, out.text_mask, "text")
    audio_nll = _cross_entropy(out.audio_logits, audio_labels, out.audio_mask, "audio")
    padding_weight = weights.text_padding_weight
    text_w = _text_weights(out.text_mask, text_labels, padding_ids=padding_ids, padding_weight=padding_weight)
    text = _weighted_mean(text_nll, text_w)
    audio = _weighted_mean(audio_nll, _audio_weights(out.audio_mask, codebook_weights))
    counts = out.audio_mask.float()
    per_codebook = torch.stack([_weighted_mean(audio_nll[:, k], counts[:, k]) for k in range(dep_q)])
    total = weights.text_weight * text + audio
    return total, {"text": text, "audio": audio, "audio_per_codebook": per_codebook}
