"""The PyTorch fine-tuning step of kyutai's recipe (kyutai-labs/moshi-finetune `train.py`), on kyutai's own `LMModel`
and LoRA (`moshi.modules.lora`, imported from the installed package): the reference the Flax step
(models_flax/training/) is proven against, and the PyTorch side of bench/train_step.py.

One `TorchTrainer.step` is the recipe's loop body: for each micro-batch, forward, the loss (models_ref/loss.py on the
model's logits and masks), backward (gradients accumulate); the gradients divided by the micro-batch count; with
bf16 parameters, the fp32 master copies swapped in (`upcast_mixed_precision`); `clip_grad_norm_`; `AdamW.step`; the
bf16 parameters written back (`downcast_mixed_precision`); `OneCycleLR.step`. Settings: moshi_spec/training.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from models_ref.lm import LMOutput
from models_ref.loss import lm_loss
from moshi_spec.training import CLIP_EPS, LoRAConfig, TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_lora(model: torch.nn.Module, lora: LoRAConfig, *, generator: torch.Generator | None = None) -> None:
    """kyutai's `replace_all_linear_with_lora` (every nn.Linear wrapped, in place), initialised as the recipe's
    `initialize_lora_parameters`: A `kaiming_uniform_(a=sqrt(5))`, B zeros."""
    from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora

    replace_all_linear_with_lora(model, lora.rank, lora.scaling)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                torch.nn.init.kaiming_uniform_(module.lora_A.weight, a=math.sqrt(5), generator=generator)
                torch.nn.init.zeros_(module.lora_B.weight)


def unreached_by_loss(model: torch.nn.Module, name: str) -> bool:
    """Whether no loss gradient reaches kyutai's parameter `name`: its extra heads (LMGen's), a demuxed depth text
    embedding's low_rank linear (created, never applied). The recipe's AdamW skips them (no gradient): not trained
    here either (models_flax.training.step.unreached_by_loss)."""
    text = getattr(model, "depformer_text_emb", None)
    unused_low_rank = getattr(text, "demux_second_stream", False) and getattr(text, "low_rank", None) is not None
    return name.startswith("extra_heads.") or (unused_low_rank and name.startswith("depformer_text_emb.low_rank."))


def set_trainable(model: torch.nn.Module, cfg: TrainConfig) -> list[str]:
    """The recipe's `requires_grad` rule: mode "full" everything; "lora" the parameters named "lora", plus those
    named "emb" with ft_embed; never those the loss cannot reach (`unreached_by_loss`). Returns the trained
    parameters' names.

    Raises:
        ValueError: mode "lora" on a model without LoRA parameters.
    """
    names = []
    for name, param in model.named_parameters():
        train = cfg.mode == "full" or "lora" in name or (cfg.lora.ft_embed and "emb" in name)
        train = train and not unreached_by_loss(model, name)
        param.requires_grad_(train)
        if train:
            names.append(name)
    if cfg.mode == "lora" and not any("lora" in n for n in names):
        raise ValueError("set_trainable: mode 'lora' needs a model with LoRA layers (add_lora)")
    return names


def output(out: Any) -> LMOutput:
    """kyutai `LMOutput` (logits, mask, text_logits, text_mask) as ours."""
    return LMOutput(text_logits=out.text_logits, text_mask=out.text_mask, audio_logits=out.logits, audio_mask=out.mask)


class TorchTrainer:
    """The recipe's optimizer, schedule, mixed precision and step on `model` (kyutai's LMModel, adapters added
    already for mode "lora"). `step(codes)` takes codes (num_microbatches, B, 1 + n_q, T)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        self.model, self.cfg = model, cfg
        self.trained = set_trainable(model, cfg)
        self.param_dtype = DTYPES[cfg.param_dtype]
        optim = cfg.optim
        with torch.no_grad():  # the recipe's prepare_mixed_precision: an fp32 copy of what trains, then param_dtype
            for param in model.parameters():
                if param.requires_grad:
                    param._mp_param = param.detach().to(torch.float32).clone()
                param.data = param.data.to(self.param_dtype)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
            weight_decay=optim.weight_decay,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=optim.lr, total_steps=cfg.total_steps, pct_start=optim.pct_start,
            div_factor=optim.div_factor, final_div_factor=optim.final_div_factor, cycle_momentum=optim.cycle_momentum,
            base_momentum=optim.base_momentum, max_momentum=optim.max_momentum,
        )  # fmt: skip

    def loss(self, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The recipe's loss of one micro-batch codes (B, 1 + n_q, T)."""
        w = self.cfg.loss
        return lm_loss(
            output(self.model(codes)), codes, text_weight=w.text_weight, audio_weights=w.audio_weights,
            first_codebook_weight_multiplier=w.first_codebook_weight_multiplier,
            text_padding_weight=w.text_padding_weight, text_padding_ids=w.text_padding_ids,
        )  # fmt: skip

    def step(self, codes: torch.Tensor) -> dict[str, float]:
        """One optimizer step; returns loss, text, audio (means over micro-batches), grad_norm, clip_factor, lr and
        beta1 (the values this update used).

        Raises:
            ValueError: codes not (num_microbatches, B, 1 + n_q, T).
        """
        params = [p for p in self.model.parameters() if p.requires_grad]
        sums = self._backward(codes)
        k = self.cfg.num_microbatches
        lr, beta1 = self.scheduler.get_last_lr()[0], self.optimizer.param_groups[0]["betas"][0]
        with torch.no_grad():  # upcast_mixed_precision
            for p in params:
                p._temp, p.data, p.grad = p.data, p._mp_param, p.grad.to(torch.float32)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_norm)
        self.optimizer.step()
        with torch.no_grad():  # downcast_mixed_precision
            for p in params:
                p._temp.copy_(p.data)
                p.data, p.grad = p._temp, p.grad.to(self.param_dtype)
        self.scheduler.step()
        metrics = {name: value / k for name, value in sums.items()}
        factor = min(self.cfg.optim.max_norm / (float(norm) + CLIP_EPS), 1.0)
        return metrics | {"grad_norm": float(norm), "clip_factor": factor, "lr": lr, "beta1": beta1}

    def _backward(self, codes: torch.Tensor) -> dict[str, float]:
        """Zeroes the gradients, accumulates each micro-batch's, divides by their count (the recipe's order); returns
        the sums over micro-batches of loss, text and audio."""
        k = self.cfg.num_microbatches
        if codes.ndim != 4 or codes.shape[0] != k:
            raise ValueError(f"TorchTrainer: codes must be ({k}, B, 1 + n_q, T), got {tuple(codes.shape)}")
        self.optimizer.zero_grad()
        sums = {"loss": 0.0, "text": 0.0, "audio": 0.0}
        for micro in codes:
            total, parts = self.loss(micro)
            total.backward()
            for name, value in (("loss", total), ("text", parts["text"]), ("audio", parts["audio"])):
                sums[name] += float(value.detach())
        self._average([p for p in self.model.parameters() if p.requires_grad], k)
        return sums

    def _average(self, params: list[torch.Tensor], k: int) -> None:
        """The recipe's accumulation: the summed micro-batch gradients divided by their count."""
        if k > 1:
            for p in params:
                p.grad.div_(k)

    def gradients(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's gradient before clipping, by trained parameter name, in float32; nothing is updated."""
        self._backward(codes)
        return {n: p.grad.detach().float().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def master(self) -> dict[str, torch.Tensor]:
        """The fp32 master copy of every trained parameter, by name."""
        return {n: p._mp_param for n, p in self.model.named_parameters() if p.requires_grad}

    def moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """AdamW's (exp_avg, exp_avg_sq) of every trained parameter, by name (after at least one step)."""
        state = self.optimizer.state
        return {
            n: (state[p]["exp_avg"], state[p]["exp_avg_sq"]) for n, p in self.model.named_parameters() if p in state
        }
