"""The sharded train step equals the unsharded one: run inside `python -m parity.harness.sharding_check` (a process
with 8 CPU devices; parity/test_sharding.py starts it), which adds this check's measurements to its JSON line.

On a (dp=2, fsdp=4) mesh, a LoRA + embeddings step with 2 micro-batches of 8 rows (split over ('dp', 'fsdp')), two
steps: every leaf of the fp32 master parameters and of both Adam moments is placed by the rules of
models_flax/sharding.py (its spec equals the parameter's rule, a split leaf's shard is smaller than the leaf), and
equals the unsharded step's within `BOUND` (max |d| / rms, the policy's ours-ours training rows). Negative control: the
sharded step fed a batch whose second half repeats the first (a data shard read twice) leaves the bound. The sharded
step compiles once for every step of both runs (a state from `init()` is placed as the step's output is; it was not,
and the second step compiled again: minutes at 7B).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models_flax import sharding
from models_flax.lm import LM
from models_flax.training.lora import add_lora, load_lora, lora_state
from models_flax.training.step import Trainer
from moshi_spec import LMConfig
from moshi_spec.loss import LossWeights
from moshi_spec.training import LoRAConfig, OptimConfig, TrainConfig
from parity.harness.placement import check_leaves, flat, rule_specs
from parity.harness.policy import tolerance_for

DP, FSDP, BATCH, LENGTH, STEPS = 2, 4, 8, 12, 2
TRAIN = TrainConfig(
    mode="lora", lora=LoRAConfig(rank=4, ft_embed=True), num_microbatches=2, total_steps=10,
    optim=OptimConfig(lr=1e-2, pct_start=0.3),
    loss=LossWeights(first_codebook_weight_multiplier=100.0, text_padding_weight=0.5, text_padding_ids=(0, 3)),
)  # fmt: skip
BOUND = {w: tolerance_for("float32", f"sharded_train_{w}", "ours-ours").atol for w in ("param", "mu", "nu")}


def _model(cfg: LMConfig) -> LM:
    model = LM(cfg, precision=jax.lax.Precision.HIGHEST, rngs=nnx.Rngs(0))
    add_lora(model, TRAIN.lora, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(2)  # B random: A's gradients are then nonzero
    load_lora(model, {k: rng.normal(0, 0.05, v.shape).astype(np.float32) if k.endswith(".b") else v
                      for k, v in lora_state(model).items()})  # fmt: skip
    return model


def _codes(cfg: LMConfig) -> np.ndarray:
    rng = np.random.default_rng(0)
    text = rng.integers(0, cfg.text_card, (2, BATCH, 1, LENGTH))
    audio = rng.integers(0, cfg.card, (2, BATCH, cfg.n_q, LENGTH))
    return np.concatenate([text, audio], axis=2).astype(np.int32)


def _leaves(state) -> dict[str, dict[str, jax.Array]]:
    inner = state.opt_state.inner_state[0]
    return {"param": flat(state.master), "mu": flat(inner.mu), "nu": flat(inner.nu)}


def _worst(ref: dict, cand: dict) -> dict[str, float]:
    out = {}
    for what in ref:
        out[what] = max(
            float(np.max(np.abs(np.asarray(cand[what][k]) - np.asarray(r))) / np.sqrt(np.mean(np.square(r))))
            for k, r in ((k, np.asarray(v, np.float64)) for k, v in ref[what].items())
            if np.any(r)
        )
    return out


def _run(trainer: Trainer, codes: np.ndarray):
    state = trainer.init()
    for _ in range(STEPS):
        state, _ = trainer.step(state, jnp.asarray(codes))
    return state


def check() -> dict:
    """Raises AssertionError on any failed check; returns the measurements."""
    cfg = LMConfig.tiny()
    codes = _codes(cfg)
    ref = _leaves(_run(Trainer(_model(cfg), TRAIN), codes))
    mesh = sharding.make_mesh(DP, FSDP)
    trainer = Trainer(_model(cfg), TRAIN, mesh=mesh)
    state = _run(trainer, codes)
    got = _leaves(state)
    specs = rule_specs(state.master, mesh)
    split = sum(check_leaves(leaves, specs, mesh, what) for what, leaves in got.items())
    worst = _worst(ref, got)
    if any(worst[w] > BOUND[w] for w in BOUND):
        raise AssertionError(f"sharded train step: max |d| / rms {worst} > {BOUND}")
    doubled = codes.copy()
    doubled[:, BATCH // 2 :] = codes[:, : BATCH // 2]
    control = _worst(ref, _leaves(_run(trainer, doubled)))  # the same compiled step, a fresh state
    if not all(control[w] > BOUND[w] for w in BOUND):
        raise AssertionError(f"negative control: a data shard read twice passes: {control} <= {BOUND}")
    compiles = trainer._step._cache_size()  # init's state is placed as the step's output: one program for all steps
    if compiles != 1:
        raise AssertionError(f"the sharded step compiled {compiles} times over {2 * STEPS} steps from 2 states")
    return {"leaves": sum(len(v) for v in got.values()), "split": split, "max_diff_over_rms": worst,
            "bound": BOUND, "doubled_shard_control": control, "compiles": compiles}  # fmt: skip
