"""The weights of the LM's training loss (kyutai's fine-tuning recipe, kyutai-labs/moshi-finetune `finetune/loss.py`),
checked once for both implementations (models_ref/loss.py, models_flax/loss.py).

The loss is text cross entropy plus audio cross entropy, each a weighted mean over its stream's positions normalised by
the sum of its weights. A position the model's output masks out (the delay pattern's tail, a zero token) weighs 0; an
audio position of codebook k weighs `audio_weights[k]`, times `first_codebook_weight_multiplier` for codebook 0 (the
recipe's 7B example: 100); a text position whose label is one of `text_padding_ids` weighs `text_padding_weight` (the
recipe: 0.5 for kyutai's padding 3 and end padding 0), any other 1. total = text_weight * text + audio (the recipe: 1).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from moshi_spec.validation import Checker


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """Checked at construction: every problem is reported together (a ConfigError, a ValueError naming each argument
    and its value). `audio_weights` (any sequence of numbers, None: all 1) is stored as a tuple of floats and
    `text_padding_ids` (any iterable of ints, e.g. the recipe's set) as a sorted tuple."""

    text_weight: float = 1.0
    audio_weights: tuple[float, ...] | None = None
    first_codebook_weight_multiplier: float = 1.0
    text_padding_weight: float = 1.0
    text_padding_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        c = Checker(self)
        for name in ("text_weight", "first_codebook_weight_multiplier", "text_padding_weight"):
            c.real(name, at_least=0.0)
        if self.audio_weights is not None:
            _set(self, "audio_weights", _floats(c, "audio_weights"))
        ids = _ints(c, "text_padding_ids")
        _set(self, "text_padding_ids", ids)
        if c.valid("text_padding_weight", "text_padding_ids"):
            c.require(
                "text_padding_weight",
                self.text_padding_weight == 1.0 or bool(ids),
                f"text_padding_weight={self.text_padding_weight:g} needs text_padding_ids (none given: it would "
                "weigh nothing)",
            )
        c.raise_if_any()

    def codebook_weights(self, dep_q: int) -> tuple[float, ...]:
        """The weight of each of the dep_q audio codebooks (the multiplier applied to codebook 0).

        Raises:
            ValueError: audio_weights of another length, or weights summing to 0 (no audio position would count).
        """
        weights = self.audio_weights if self.audio_weights is not None else (1.0,) * dep_q
        if len(weights) != dep_q:
            raise ValueError(f"loss: audio_weights must have one weight per codebook (dep_q {dep_q}), got {weights}")
        weights = (weights[0] * self.first_codebook_weight_multiplier, *weights[1:])
        if not sum(weights) > 0:
            raise ValueError(
                f"loss: the codebook weights must not all be 0, got audio_weights {self.audio_weights} with "
                f"first_codebook_weight_multiplier {self.first_codebook_weight_multiplier:g}"
            )
        return weights

    def padding_ids(self, text_card: int) -> tuple[int, ...]:
        """text_padding_ids, checked to be text tokens (< text_card).

        Raises:
            ValueError: an id outside the text vocabulary.
        """
        bad = [i for i in self.text_padding_ids if i >= text_card]
        if bad:
            raise ValueError(f"loss: text_padding_ids {bad} are not text tokens (text_card {text_card})")
        return self.text_padding_ids


def _set(config: Any, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)


def _floats(c: Checker, name: str) -> tuple[float, ...]:
    """A sequence of finite numbers >= 0 as a tuple of floats (bad entries reported one by one)."""
    values = c.value(name)
    try:
        values = tuple(values)
    except TypeError:
        c.wrong_type(name, "a sequence of floats")
        return ()
    for k, v in enumerate(values):
        field = f"{name}[{k}]"
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            c.wrong_type(field, "a float", value=v)
            continue
        if not (math.isfinite(float(v)) and float(v) >= 0):
            c.fail(field, f"{field} must be finite and >= 0, got {v}", value=v)
    return tuple(float(v) for v in values) if c.valid(name) else values


def _ints(c: Checker, name: str) -> tuple[int, ...]:
    """An iterable of Python ints >= 0 as a sorted tuple without repeats."""
    values = c.value(name)
    if not isinstance(values, Iterable) or isinstance(values, str | bytes):
        c.wrong_type(name, "a collection of ints")
        return ()
    values = tuple(values)
    ok = all([c.integer(f"{name}[{k}]", minimum=0, value=v) for k, v in enumerate(values)])
    return tuple(sorted(set(values))) if ok else values
