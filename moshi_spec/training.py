"""Fine-tuning settings, after kyutai's recipe (kyutai-labs/moshi-finetune `train.py`, `finetune/args.py`), read by both
trainers (models_ref/training.py on kyutai's LMModel, models_flax/training/) and by `python -m train`.

- mode "lora": every linear of both transformers and the heads becomes `W x + scaling * B(A x)` (kyutai's
  `moshi.modules.lora`): A Kaiming-uniform, B zeros; only A and B train (and the embeddings with `ft_embed`).
  mode "full": every parameter trains.
- optimizer: AdamW (betas, eps, weight decay on every trained parameter), the gradient clipped to `max_norm` (torch's
  `clip_grad_norm_`: factor max_norm / (norm + 1e-6), at most 1) before the update, and torch's `OneCycleLR` over
  `total_steps` (cosine, two phases), which with `cycle_momentum` also moves Adam's beta1 between `max_momentum` and
  `base_momentum` (torch's default, kept by the recipe: beta1 0.95 -> 0.85 -> 0.95).
- `num_microbatches`: the gradient of one step is the mean of the micro-batches' gradients (the recipe's
  accumulation: each micro-batch's loss is its own weighted mean).
- `param_dtype` "bfloat16": the model computes with bf16 parameters; the optimizer updates an fp32 master copy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from moshi_spec.loss import LossWeights
from moshi_spec.validation import Checker

MODES = ("lora", "full")
PARAM_DTYPES = ("float32", "bfloat16")
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6)


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """kyutai's LoRA: rank, scaling (the recipe's example: 128 and 2.0); ft_embed also trains the embeddings."""

    rank: int = 128
    scaling: float = 2.0
    ft_embed: bool = False

    def __post_init__(self) -> None:
        c = Checker(self)
        c.integer("rank")
        c.real("scaling", at_least=0.0)
        c.flag("ft_embed")
        c.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW + clipping + OneCycleLR; defaults are the recipe's (lr its args' default, 1e-4) and torch's."""

    lr: float = 1e-4
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_norm: float = 1.0
    pct_start: float = 0.05
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    beta1: float = 0.9  # Adam's beta1 when cycle_momentum is off (the recipe's AdamW(betas=(0.9, 0.95)))

    def __post_init__(self) -> None:
        c = Checker(self)
        c.real("lr", above=0.0)
        for name in ("beta1", "beta2", "base_momentum", "max_momentum"):
            if c.real(name, at_least=0.0):
                c.require(name, getattr(self, name) < 1.0, f"{name} must be < 1, got {getattr(self, name)}")
        c.real("eps", above=0.0)
        c.real("weight_decay", at_least=0.0)
        c.real("max_norm", above=0.0)
        if c.real("pct_start", above=0.0):
            c.require("pct_start", self.pct_start < 1.0, f"pct_start must be < 1, got {self.pct_start}")
        c.real("div_factor", above=0.0)
        c.real("final_div_factor", above=0.0)
        c.flag("cycle_momentum")
        c.raise_if_any()

    def phase_ends(self, total_steps: int) -> tuple[float, float]:
        """OneCycleLR's two phase ends: (pct_start * total_steps - 1, total_steps - 1), as torch computes them.

        Raises:
            ValueError: total_steps < 1, or pct_start * total_steps == 1 (torch then divides 0 by 0 at step 0).
        """
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(f"OneCycle schedule: total_steps must be an int >= 1, got {total_steps!r}")
        warmup_end = float(self.pct_start * total_steps) - 1
        if warmup_end == 0.0:
            raise ValueError(
                f"OneCycle schedule: pct_start {self.pct_start} x total_steps {total_steps} = 1 makes a warm-up phase "
                "of zero steps (torch's OneCycleLR divides by zero at step 0); change pct_start or total_steps"
            )
        return warmup_end, float(total_steps - 1)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One fine-tuning run's settings (the model and data are given beside it)."""

    mode: Literal["lora", "full"] = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    total_steps: int = 100
    num_microbatches: int = 1
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        c = Checker(self)
        c.choice("mode", MODES)
        c.choice("param_dtype", PARAM_DTYPES)
        c.integer("total_steps")
        c.integer("num_microbatches")
        c.flag("remat")
        for name, kind in (("lora", LoRAConfig), ("optim", OptimConfig), ("loss", LossWeights)):
            if not isinstance(getattr(self, name), kind):
                c.wrong_type(name, kind.__name__)
        if c.valid("optim", "total_steps"):
            try:
                self.optim.phase_ends(self.total_steps)
            except ValueError as err:
                c.fail("total_steps", str(err))
        c.raise_if_any()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From a JSON-like dict with nested "lora", "optim" and "loss" dicts; an unknown key is a ValueError naming
        it."""
        data = dict(data)
        nested = {"lora": LoRAConfig, "optim": OptimConfig, "loss": LossWeights}
        for name, kind in nested.items():
            if name in data:
                data[name] = kind(**_known(kind, data[name], name))
        return cls(**_known(cls, data, "train"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _known(kind: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
    return data
