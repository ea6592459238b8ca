"""The training pair the parity tests drive: kyutai's LMModel under the recipe's PyTorch step (models_ref/training.py)
and our Flax LM under the Flax step (models_flax/training/), with the same weights, the same adapters and the same
TrainConfig; and the maps that put kyutai's per-parameter tensors (gradients, master weights, Adam moments) under our
parameter paths, so that each is compared with its Flax twin.

LoRA B starts random here (the recipe starts it at zero): with B = 0 the gradients of every A are zero, so A's
gradients, updates and moments would go untested.

Degenerate entries: the first depth step attends to a single key, so its softmax is 1 whatever the query, and the
query's gradient is exactly 0 (the query columns of weight set 0 of each depth attention: q_proj's kernel, or the q
part of the fused adapter's B). Flax computes an exact 0 there; kyutai's attention backward returns rounding noise
(measured |g| ~ 1e-9 where the tensor's other gradients are ~1e-4), which AdamW, dividing by sqrt(v) + eps, turns into
updates of up to ~0.2 lr. `single_key_queries` names those entries: the step comparisons check them separately (a
strict expected divergence) and compare every other entry to the policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flax import nnx

import converters
from converters import lora as lora_map
from models_flax.training.lora import add_lora as flax_add_lora
from models_flax.training.lora import load_lora
from models_flax.training.step import Trainer
from models_ref.training import TorchTrainer
from models_ref.training import add_lora as torch_add_lora
from moshi_spec import LMConfig
from moshi_spec.training import TrainConfig
from parity.harness import placement
from parity.harness.compare import assert_parity
from parity.harness.implementations import build

B_STD = 0.05  # LoRA B's random start in tests (A: Kaiming-uniform, as the recipe)


def flat(state: nnx.State) -> dict[str, np.ndarray]:
    """An nnx.State as {'.'-joined path: numpy array}."""
    return {name: np.asarray(value) for name, value in placement.flat(state).items()}


@dataclass
class Pair:
    torch: TorchTrainer
    flax: Trainer
    cfg: LMConfig
    train: TrainConfig


def make_pair(
    cfg: LMConfig, train: TrainConfig, *, seed: int = 0, torch_train: TrainConfig | None = None,
    torch_trainer: type[TorchTrainer] = TorchTrainer,
) -> Pair:  # fmt: skip
    """Fresh trainers on copies of the same weights (each call builds new models: a trainer updates its model).
    `torch_train` / `torch_trainer` give the PyTorch side another config or step (negative controls)."""
    models = build("lm", cfg, "float32", impls=("kyutai", "flax"), seed=seed)
    if train.mode == "lora":
        add_matching_lora(models.module("kyutai"), models.module("flax"), cfg, train.lora, seed=seed)
    return Pair(torch_trainer(models.module("kyutai"), torch_train or train), Trainer(models.module("flax"), train),
                cfg, train)  # fmt: skip


def add_matching_lora(kyutai: torch.nn.Module, flax: nnx.Module, cfg: LMConfig, lora, *, seed: int = 0) -> None:
    """kyutai's LoRA on every linear of `kyutai` (B drawn with std B_STD, so that the adapters change the model) and
    ours on `flax`, loaded with kyutai's adapters through converters.lora (in place)."""
    gen = torch.Generator().manual_seed(seed + 1)
    torch_add_lora(kyutai, lora, generator=gen)
    with torch.no_grad():
        for name, p in kyutai.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, B_STD, generator=gen)
    flax_add_lora(flax, lora, rngs=nnx.Rngs(seed))
    load_lora(flax, lora_map.kyutai_to_flax(lora_tensors(kyutai), cfg))


def lora_tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().float().numpy() for n, p in model.named_parameters() if "lora_" in n}


def base_name(name: str) -> str:
    """kyutai's parameter name without LoRA's wrapping (`x.frozen_W.weight` -> `x.weight`, and a bias_proj head's
    `x.frozen_W.bias` -> `x.bias`)."""
    return name.replace(".frozen_W.", ".")


def to_flax(tensors: Mapping[str, np.ndarray], pair: Pair, keys: set[str]) -> dict[str, np.ndarray]:
    """kyutai-named per-parameter tensors (gradients, master weights, moments) -> the Flax paths in `keys`: adapters
    through converters.lora, base parameters through the LM converter, each of which needs a whole state: the
    trainer's model's own tensors fill the keys not given."""
    cfg = pair.cfg
    adapters = {n: v for n, v in tensors.items() if "lora_" in n}
    base = {base_name(n): v for n, v in tensors.items() if "lora_" not in n}
    out = {}
    if adapters:  # the untrained adapters (unreached by the loss) from the trainer's model, as for base weights
        converted = lora_map.kyutai_to_flax(lora_tensors(pair.torch.model) | adapters, cfg)
        out = {k: converted[k] for k in keys & converted.keys()}
    if base:
        weights = {base_name(n): p.detach().float().numpy() for n, p in pair.torch.model.named_parameters()
                   if "lora_" not in n}  # fmt: skip
        converted = converters.convert(weights | base, src="kyutai", dst="flax", cfg=cfg, component="lm")
        out |= {k: converted[k] for k in keys - out.keys()}
    return out


def compare_parameters(
    ref: dict, cand: dict, pair: Pair, *, component: str, control: str | None = None, what: str = ""
) -> None:
    """kyutai's per-parameter tensors (under our paths: `to_flax`) against ours, every parameter judged by the policy
    row `component`, its degenerate single-key-query entries left out (`single_key_queries`)."""
    assert set(ref) == set(cand), set(ref) ^ set(cand)
    for name in sorted(ref):
        r, c = np.asarray(ref[name], np.float32), np.asarray(cand[name], np.float32)
        mask = single_key_queries(name, r.shape, pair.cfg)
        if mask is not None:
            r, c = r[~mask], c[~mask]
        assert_parity(r, c, component=component, pair=("kyutai", "flax"), expected_dtype="float32", control=control,
                      config={"parameter": name, "when": what, "train": dataclasses.asdict(pair.train)})  # fmt: skip


def single_key_queries(path: str, shape: tuple[int, ...], cfg: LMConfig) -> np.ndarray | None:
    """Boolean mask of the degenerate entries of one parameter (see the module docstring), None if it has none."""
    d, sets = cfg.depth, cfg.depth_sets
    # the first step's weight set, when no other step shares it (a schedule's or a stack shared by every step's do)
    if not path.startswith("depth.layers.") or sets is None or sets.count(sets[0]) > 1:
        return None
    if path.endswith("self_attn.qkv_lora.b") or path.endswith("self_attn.q_proj.kernel"):
        mask = np.zeros(shape, bool)
        mask[sets[0], :, : d.q_dim] = True
        return mask
    return None


def codes_batch(cfg: LMConfig, k: int, batch: int, length: int, *, seed: int, spans: bool = True) -> np.ndarray:
    """(k, B, 1 + n_q, T) int32 codes with text padding ids 0 and 3 and, with spans, zero-token (-1) spans."""
    rng = np.random.default_rng(seed)
    text = rng.integers(0, cfg.text_card, (k, batch, 1, length))
    text[rng.random(text.shape) < 0.3] = 3
    text[rng.random(text.shape) < 0.1] = 0
    audio = rng.integers(0, cfg.card, (k, batch, cfg.n_q, length))
    codes = np.concatenate([text, audio], axis=2)
    if spans:
        for _ in range(2):
            s = int(rng.integers(0, 1 + cfg.n_q))
            t0 = int(rng.integers(0, length - 2))
            codes[int(rng.integers(0, k)), int(rng.integers(0, batch)), s, t0 : t0 + 3] = -1
    return codes.astype(np.int32)
