"""The Flax train step: the recipe's loss (models_flax/loss.py), its gradient averaged over micro-batches, clipped as
torch clips it, AdamW with the OneCycle schedule (models_flax/training/optimizer.py), on an fp32 master copy of the
trained parameters while the model computes in `param_dtype`; jitted once, on one device or on a ('dp', 'fsdp') mesh
where parameters, gradients and optimizer state are split by the rules of models_flax/sharding.py.

    trainer = Trainer(model, cfg, mesh=None)           # model: an LM (with adapters for mode "lora", `add_lora`)
    state = trainer.init()                             # TrainState(step, master, opt_state)
    state, metrics = trainer.step(state, codes)        # codes (num_microbatches, B, 1 + n_q, T)
    model = trainer.model(state)                       # the LM with the trained parameters, in param_dtype

What trains (`trainable`): mode "full" every parameter; mode "lora" the adapters' A and B, plus the embedding tables
with `lora.ft_embed` (kyutai's rule: parameters named "emb"); never what the loss cannot reach (`unreached_by_loss`:
kyutai's extra heads, a demuxed depth text embedding's unused low_rank linear), which kyutai's optimizer skips for
want of a gradient. The rest is frozen: stored once in `param_dtype`, passed to the step as an argument (never baked
into the compiled program), never updated.

Accumulation is the recipe's: each micro-batch's loss is its own weighted mean and the step's gradient is the mean of
the micro-batches' gradients (summed in float32; the recipe sums in the parameters' dtype). Metrics of a step: loss,
text, audio (means over micro-batches), grad_norm (before clipping), clip_factor, lr and beta1 (the values the update
used), out_of_range (labels outside their vocabulary, masked: the caller must stop on a nonzero count).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models_flax import sharding
from models_flax.attention import pallas_layers
from models_flax.lm import LM
from models_flax.loss import lm_loss
from models_flax.training.lora import LoRAParam, has_lora
from models_flax.training.optimizer import adamw, clip_by_global_norm
from moshi_spec.training import TrainConfig

METRICS = ("loss", "text", "audio", "grad_norm", "clip_factor", "lr", "beta1", "out_of_range")


@struct.dataclass
class TrainState:
    """What a step updates (and a checkpoint stores): the step count, the fp32 master copy of the trained parameters
    and the optimizer state (AdamW moments, update count, schedule values)."""

    step: jax.Array
    master: nnx.State
    opt_state: Any


def _is_embedding(path: tuple, value: Any) -> bool:
    return isinstance(value, nnx.Param) and any(str(p).endswith("embed_tokens") for p in path)


def unreached_by_loss(model: LM) -> Any:
    """nnx filter: the parameters no loss gradient reaches: kyutai's extra heads (LMGen reads them, the LM's loss does
    not) and, with demux_second_text_stream over low-rank depth tables, the depth text embedding's low_rank linear
    (kyutai creates it and never applies it). kyutai's AdamW skips a parameter without a gradient, weight decay
    included; freezing them is the same."""
    cfg = model.cfg
    unused_low_rank = cfg.demux_second_text_stream and cfg.depth_low_rank is not None

    def unreached(path: tuple, value: Any) -> bool:
        names = tuple(str(p) for p in path)
        return names[0] == "extra_heads" or (
            unused_low_rank and names[:3] == ("depth", "text_embed_tokens", "low_rank")
        )

    return unreached


def trainable(cfg: TrainConfig, model: LM) -> Any:
    """The nnx filter of `model`'s trained parameters (see the module docstring)."""
    if cfg.mode == "full":
        base = nnx.Param
    else:
        base = nnx.Any(LoRAParam, _is_embedding) if cfg.lora.ft_embed else LoRAParam
    return nnx.All(base, nnx.Not(unreached_by_loss(model)))


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


class Trainer:
    """The jitted train step of one model and one TrainConfig (see the module docstring).

    Raises (at construction):
        ValueError: mode "lora" on a model without adapters, mode "full" on one with adapters, a model with Pallas
            attention (forward-only kernels, naming its layers), or a mesh the parameters do not split on (naming the
            parameters).
    """

    def __init__(self, model: LM, cfg: TrainConfig, *, mesh: Mesh | None = None):
        if cfg.mode == "lora" and not has_lora(model):
            raise ValueError("Trainer: mode 'lora' needs a model with adapters (models_flax.training.lora.add_lora)")
        if cfg.mode == "full" and has_lora(model):
            raise ValueError("Trainer: mode 'full' on a model with LoRA adapters; merge them first (merge_lora)")
        pallas = pallas_layers(model)
        if pallas:
            raise ValueError(
                f"Trainer: the model's attention is 'pallas' ({len(pallas)} layers, first {pallas[0]}): the Pallas "
                "kernels are forward-only (no gradient); build the model to train with impl='xla'"
            )
        self.cfg, self.mesh, self.lm_cfg = cfg, mesh, model.cfg
        self.param_dtype = jnp.dtype(cfg.param_dtype)
        model.set_remat(cfg.remat)
        self.graphdef, trained, frozen, rest = nnx.split(model, trainable(cfg, model), nnx.Param, ...)
        self._initial = _cast(trained, self.param_dtype)  # the recipe: weights in param_dtype, then an fp32 copy
        self.frozen, self.rest = _cast(frozen, self.param_dtype), rest
        self.optimizer = adamw(cfg.optim, cfg.total_steps)
        self._shardings = None
        if mesh is not None:
            self._shardings = self._place(mesh)
        step = functools.partial(_step, graphdef=self.graphdef, cfg=cfg)
        if self._shardings is None:  # shared by every trainer of the same model structure and config: one compile
            self._step = functools.partial(_STEP, graphdef=self.graphdef, cfg=cfg)
        else:
            state, frozen_sh, rest_sh, data = self._shardings
            self._step = jax.jit(
                step, in_shardings=(state, frozen_sh, rest_sh, data), out_shardings=(state, None), donate_argnums=0
            )

    def _place(self, mesh: Mesh) -> tuple:
        named = functools.partial(jax.tree.map, lambda spec: NamedSharding(mesh, spec))
        master_specs = sharding.param_specs(self._initial, mesh)
        frozen_specs = sharding.param_specs(self.frozen, mesh)
        self.frozen = jax.device_put(self.frozen, named(frozen_specs))
        self._initial = jax.device_put(self._initial, named(master_specs))
        self.rest = jax.device_put(self.rest, NamedSharding(mesh, P()))
        abstract = jax.eval_shape(self.optimizer.init, self._initial)
        opt_specs = optax.tree_map_params(
            self.optimizer, lambda _, spec: spec, abstract, master_specs, transform_non_params=lambda _: P(),
            is_leaf=lambda x: isinstance(x, P),
        )  # fmt: skip
        state = TrainState(step=P(), master=master_specs, opt_state=opt_specs)
        return named(state), named(frozen_specs), NamedSharding(mesh, P()), NamedSharding(mesh, P(None, sharding.AXES))

    def init(self) -> TrainState:
        """Step 0: the master copy of the trained parameters (fp32) and fresh optimizer state."""
        master = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), self._initial)  # the step donates it
        init = self.optimizer.init if self._shardings is None else jax.jit(
            self.optimizer.init, out_shardings=self._shardings[0].opt_state
        )  # fmt: skip
        state = TrainState(step=jnp.zeros((), jnp.int32), master=master, opt_state=init(master))
        # committed to the device (on a mesh: placed as the step's output is, the step counter replicated), as a
        # restored state is: every step then hits the one compiled step
        return jax.device_put(state, None if self._shardings is None else self._shardings[0])

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of `init()`'s state, for restoring a checkpoint without computing one."""
        state = jax.eval_shape(self.init)
        if self._shardings is None:
            return state
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, self._shardings[0])

    def check_codes(self, codes: jax.Array) -> None:
        """Raises a ValueError naming the shape unless codes is (num_microbatches, B, 1 + n_q, T)."""
        k, streams = self.cfg.num_microbatches, 1 + self.lm_cfg.n_q
        if codes.ndim != 4 or codes.shape[0] != k or codes.shape[2] != streams:
            raise ValueError(
                f"Trainer: codes must be (num_microbatches = {k}, B, 1 + n_q = {streams}, T), got shape "
                f"{tuple(codes.shape)}"
            )

    def step(self, state: TrainState, codes: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on codes (num_microbatches, B, 1 + n_q, T); `state` is consumed (donated).

        Raises:
            ValueError: codes of another rank, micro-batch count or stream count, naming the shape.
        """
        self.check_codes(codes)
        if self._shardings is not None:
            codes = jax.device_put(codes, self._shardings[3])
        return self._step(state, self.frozen, self.rest, codes)

    def gradients(self, state: TrainState, codes: jax.Array) -> nnx.State:
        """The step's gradient before clipping (float32, the mean over micro-batches), by parameter: for tests and
        diagnostics (a separate compiled function; `step` does not call it)."""
        self.check_codes(codes)
        return _GRADIENTS(state.master, self.frozen, self.rest, codes, graphdef=self.graphdef, cfg=self.cfg)[0]

    def model(self, state: TrainState) -> LM:
        """The LM with the trained parameters of `state` (cast to param_dtype) and the frozen ones."""
        merged = nnx.merge(self.graphdef, _cast(state.master, self.param_dtype), self.frozen, self.rest)
        return nnx.clone(merged)  # its own Variables: editing it (merge_lora) leaves the trainer's frozen state alone


def _gradients(
    master: nnx.State, frozen: nnx.State, rest: nnx.State, codes: jax.Array, *, graphdef: Any, cfg: TrainConfig
) -> tuple[nnx.State, jax.Array]:
    """The mean over micro-batches of the loss gradient (float32, unclipped) at the master parameters cast to
    param_dtype, and the sums over micro-batches of (loss, text, audio, out_of_range)."""
    weights = dict(
        text_weight=cfg.loss.text_weight,
        audio_weights=cfg.loss.audio_weights,
        first_codebook_weight_multiplier=cfg.loss.first_codebook_weight_multiplier,
        text_padding_weight=cfg.loss.text_padding_weight,
        text_padding_ids=cfg.loss.text_padding_ids,
    )
    params = _cast(master, jnp.dtype(cfg.param_dtype))

    def loss_fn(params: nnx.State, batch: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        model = nnx.merge(graphdef, params, frozen, rest)
        return lm_loss(model(batch), batch, **weights)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(carry: tuple, batch: jax.Array) -> tuple[tuple, None]:
        grads, sums = carry
        (total, parts), g = grad_fn(params, batch)
        values = jnp.stack([total, parts["text"], parts["audio"], parts["out_of_range"].astype(jnp.float32)])
        return (jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g), sums + values), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
    (grads, sums), _ = jax.lax.scan(micro, (zeros, jnp.zeros(4, jnp.float32)), codes)
    k = codes.shape[0]
    return jax.tree.map(lambda g: g / k, grads), sums


def _step(
    state: TrainState, frozen: nnx.State, rest: nnx.State, codes: jax.Array, *, graphdef: Any, cfg: TrainConfig
) -> tuple[TrainState, dict[str, jax.Array]]:
    optimizer = adamw(cfg.optim, cfg.total_steps)  # built from cfg alone: the same transformation as Trainer's
    grads, sums = _gradients(state.master, frozen, rest, codes, graphdef=graphdef, cfg=cfg)
    grads, norm, factor = clip_by_global_norm(grads, cfg.optim.max_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.master)
    master = optax.apply_updates(state.master, updates)
    hyper, k = opt_state.hyperparams, codes.shape[0]
    metrics = {
        "loss": sums[0] / k,
        "text": sums[1] / k,
        "audio": sums[2] / k,
        "grad_norm": norm,
        "clip_factor": factor,
        "lr": hyper["learning_rate"],
        "beta1": hyper["b1"],
        "out_of_range": sums[3],
    }
    return TrainState(step=state.step + 1, master=master, opt_state=opt_state), metrics


# Compiled once per (model structure, TrainConfig) and shared by every Trainer that has them (tests build many).
_STEP = jax.jit(_step, static_argnames=("graphdef", "cfg"), donate_argnums=0)
_GRADIENTS = jax.jit(_gradients, static_argnames=("graphdef", "cfg"))
