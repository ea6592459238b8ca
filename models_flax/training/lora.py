"""LoRA adapters on the LM's linears, as kyutai's `moshi.modules.lora` puts them: `W x + scaling * B(A x)` on every
linear of both transformers and both heads.

kyutai wraps each `nn.Linear`: the fused [q; k; v] projection `in_projs` of each attention (one A shared by q, k and v;
ours are three kernels, so the adapter sits on the attention, `Attention.qkv_lora`, and its output is split), the output
projection, the gating MLP's two linears, the text head, and, per depth codebook, `depformer_in` and the heads
`linears`. A per-codebook linear (FlexibleLinear) gets one A and one B per weight set, selected like its kernels.

A is Kaiming-uniform (torch's `kaiming_uniform_(a=sqrt(5))`: U(-1/sqrt(in), 1/sqrt(in))) and B zeros, as the recipe
initialises them, so a fresh adapter leaves the model's output unchanged. Layouts: A (..., in, r), B (..., r, out),
the leading axis the weight sets of a per-codebook linear.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.attention import Attention
from models_flax.linear import FlexibleLinear, Linear, apply_kernels, einsum
from moshi_spec.training import LoRAConfig


class LoRAParam(nnx.Param):
    """A LoRA factor (A or B): the parameters LoRA fine-tuning trains."""


class LoRA(nnx.Module):
    """scaling * B(A x) for a linear in -> out; `weight_sets` None for a plain linear, else one A, B per weight set."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        scaling: float,
        weight_sets: int | None = None,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        lead = () if weight_sets is None else (weight_sets,)
        bound = 1.0 / math.sqrt(in_features)
        a = jax.random.uniform(rngs.params(), (*lead, in_features, rank), jnp.float32, -bound, bound)
        self.a = LoRAParam(a.astype(param_dtype))
        self.b = LoRAParam(jnp.zeros((*lead, rank, out_features), param_dtype))
        self.scaling = float(scaling)
        self.dtype, self.precision = dtype, precision

    def __call__(self, x: jax.Array, *, layer_idx: object = None) -> jax.Array:
        """x (..., in) -> (..., out) in float32 (the caller adds it to its own float32 accumulation)."""
        a, b = self.a[...].astype(self.dtype), self.b[...].astype(self.dtype)
        if a.ndim == 2:
            h = einsum("...i,ir->...r", x, a, precision=self.precision).astype(self.dtype)
            y = einsum("...r,ro->...o", h, b, precision=self.precision)
        else:  # per-codebook factors: A then B, each selected by layer_idx (an S == 1 input fans out at A)
            h = apply_kernels(x, a, layer_idx, precision=self.precision).astype(self.dtype)
            y = apply_kernels(h, b, layer_idx, precision=self.precision)
        return self.scaling * y

    def delta(self) -> jax.Array:
        """scaling * A @ B in float32: (..., in, out), what merging adds to the kernel."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        return self.scaling * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _sites(model: nnx.Module) -> tuple[list[Attention], list[Linear | FlexibleLinear]]:
    """The attentions (their fused q/k/v adapter) and every other linear an adapter wraps."""
    attentions, linears, qkv = [], [], set()
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Attention):
            attentions.append(module)
            qkv |= {id(module.q_proj), id(module.k_proj), id(module.v_proj)}
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Linear | FlexibleLinear) and id(module) not in qkv:
            linears.append(module)
    return attentions, linears


def add_lora(model: nnx.Module, lora: LoRAConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """Attaches a fresh adapter (A Kaiming-uniform, B zeros) to every linear of `model` (in place); returns it.

    Raises:
        ValueError: the model already has adapters.
    """
    attentions, linears = _sites(model)
    if any(m.qkv_lora is not None for m in attentions) or any(m.lora is not None for m in linears):
        raise ValueError("add_lora: the model already has LoRA adapters")
    for attn in attentions:
        cfg, proj = attn.cfg, attn.q_proj
        attn.qkv_lora = LoRA(cfg.dim, cfg.q_dim + 2 * cfg.kv_dim, **_kwargs(proj, lora, rngs))
    for linear in linears:
        linear.lora = LoRA(linear.in_features, linear.out_features, **_kwargs(linear, lora, rngs))
    return model


def _kwargs(linear: Linear | FlexibleLinear, lora: LoRAConfig, rngs: nnx.Rngs) -> dict:
    return dict(
        rank=lora.rank,
        scaling=lora.scaling,
        weight_sets=linear.num_layers if isinstance(linear, FlexibleLinear) else None,
        dtype=linear.dtype,
        param_dtype=linear.kernel[...].dtype,
        precision=linear.precision,
        rngs=rngs,
    )


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its kernel (W + scaling * A @ B, computed in float32, stored in the kernel's dtype)
    and removes it, in place; returns the model, now a plain LM (kyutai's `replace_lora_with_linear`)."""
    attentions, linears = _sites(model)
    for attn in attentions:
        if attn.qkv_lora is None:
            continue
        cfg = attn.cfg
        parts = jnp.split(attn.qkv_lora.delta(), (cfg.q_dim, cfg.q_dim + cfg.kv_dim), axis=-1)
        for proj, part in zip((attn.q_proj, attn.k_proj, attn.v_proj), parts, strict=True):
            _add(proj, part)
        attn.qkv_lora = None
    for linear in linears:
        if linear.lora is not None:
            _add(linear, linear.lora.delta())
            linear.lora = None
    return model


def _add(linear: Linear | FlexibleLinear, delta: jax.Array) -> None:
    kernel = linear.kernel[...]
    linear.kernel[...] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)


def has_lora(model: nnx.Module) -> bool:
    attentions, linears = _sites(model)
    return any(m.qkv_lora is not None for m in attentions) or any(m.lora is not None for m in linears)


def lora_state(model: nnx.Module) -> dict[str, jax.Array]:
    """Every adapter factor by its '.'-joined path (`layers.0.self_attn.qkv_lora.a`, ...)."""
    return {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, LoRAParam))}


def load_lora(model: nnx.Module, values: dict[str, object]) -> None:
    """Sets every adapter factor from {path: array} (exact keys, shapes and the factors' dtype).

    Raises:
        ValueError: missing, unexpected or misshaped keys, listed.
    """
    flat = nnx.to_flat_state(nnx.state(model, LoRAParam))
    paths = {".".join(map(str, p)): v for p, v in flat}
    missing, unexpected = sorted(set(paths) - set(values)), sorted(set(values) - set(paths))
    shapes = [f"{k}: {tuple(jnp.shape(values[k]))} != {paths[k].get_value().shape}" for k in paths
              if k in values and tuple(jnp.shape(values[k])) != paths[k].get_value().shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise ValueError(f"load_lora: missing {missing}, unexpected {unexpected}, misshaped {shapes}")
    for key, variable in paths.items():
        variable.set_value(jnp.asarray(values[key], variable.get_value().dtype))
