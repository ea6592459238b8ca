"""Builds every implementation of one component from one config and ONE set of random weights, and runs them.

Weights are drawn once in the upstream layout (kyutai's where kyutai has the component, so the kyutai -> hf edge is on
the path, else HF's), then reach every other implementation only through `converters.convert`: a converter bug shows up
as a parity failure. Implementations: "kyutai", "hf" (upstream origins), "ref" (refactored PyTorch), "flax".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from jax import lax

import converters
import models_flax
import models_ref
from models_ref import origin
from moshi_spec import TransformerConfig
from parity.harness.strategies import Case

CACHED = "_cached"
"""Suffix of a pseudo-implementation that runs ref or flax attention / layers one step at a time through a KV cache."""

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
JAX_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

REF_CLASSES = {
    "flexible_linear": models_ref.FlexibleLinear,
    "rmsnorm": models_ref.RMSNorm,
    "gating_mlp": models_ref.GatingMLP,
    "rope": models_ref.RotaryEmbedding,
    "attention": models_ref.Attention,
    "decoder_layer": models_ref.DecoderLayer,
}
FLAX_CLASSES = {
    "flexible_linear": models_flax.FlexibleLinear,
    "rmsnorm": models_flax.RMSNorm,
    "gating_mlp": models_flax.GatingMLP,
    "rope": models_flax.RotaryEmbedding,
    "attention": models_flax.Attention,
    "decoder_layer": models_flax.DecoderLayer,
}


def _constructor_args(component: str, cfg: TransformerConfig) -> tuple[tuple, dict]:
    if component == "flexible_linear":
        layers, fan_in, fan_out = origin.flexible_linear_shape(cfg)
        return (fan_in, fan_out, layers), {}
    if component == "rmsnorm":
        return (cfg.dim,), {"eps": cfg.norm_eps}
    if component == "rope":
        return (cfg.head_dim,), {"theta": cfg.rope_theta, "layout": cfg.rope_layout}
    return (cfg,), {}


def build_ref(component: str, cfg: TransformerConfig, dtype: str) -> torch.nn.Module:
    args, kwargs = _constructor_args(component, cfg)
    if component == "rope":
        return REF_CLASSES[component](*args, **kwargs)
    return REF_CLASSES[component](*args, **kwargs, dtype=TORCH_DTYPES[dtype]).eval()


def build_flax(component: str, cfg: TransformerConfig, dtype: str) -> nnx.Module:
    args, kwargs = _constructor_args(component, cfg)
    if component == "rope":
        return FLAX_CLASSES[component](*args, **kwargs)
    dt = JAX_DTYPES[dtype]
    kwargs |= {"dtype": dt, "param_dtype": dt}
    if component != "rmsnorm":
        kwargs |= {"precision": lax.Precision.HIGHEST, "rngs": nnx.Rngs(0)}
    return FLAX_CLASSES[component](*args, **kwargs)


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights that make every parameter matter: linears ~ N(0, 1/fan_in), norm scales ~ 1 + 0.3 N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("alpha") or "norm" in name or p.dim() == 1:
                p.copy_((1 + 0.3 * noise).to(p.dtype))
            else:
                p.copy_((noise / p.shape[-1] ** 0.5).to(p.dtype))


@dataclass
class Implementations:
    """All implementations of one component sharing one set of weights."""

    component: str
    cfg: TransformerConfig
    dtype: str
    modules: dict[str, object] = field(default_factory=dict)
    states: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __call__(self, impl: str, case: Case) -> object:
        """Runs implementation `impl` on the case's input; returns its native output array."""
        return run(self, impl, case)


def build(component: str, cfg: TransformerConfig, dtype: str, *, impls=("hf", "ref", "flax"), seed: int = 0):
    """Builds the requested implementations with the same weights (see the module docstring)."""
    out = Implementations(component, cfg, dtype)
    kyutai_reason = origin.kyutai_supports(component, cfg)
    if "kyutai" in impls and kyutai_reason:
        raise ValueError(f"build({component}): no kyutai implementation: {kyutai_reason}")
    if component == "rope":  # no weights
        builders = {"hf": origin.build_hf, "kyutai": origin.build_kyutai}
        for impl in impls:
            if impl in builders:
                out.modules[impl] = builders[impl](component, cfg, dtype=TORCH_DTYPES[dtype])
            else:
                out.modules[impl] = (build_ref if impl == "ref" else build_flax)(component, cfg, dtype)
        return out
    source = "hf" if kyutai_reason else "kyutai"
    upstream = (origin.build_kyutai if source == "kyutai" else origin.build_hf)(
        component, cfg, dtype=TORCH_DTYPES[dtype]
    )
    randomize_(upstream, seed)
    out.modules[source] = upstream
    out.states[source] = converters.torch_state(upstream)
    for name in impls:
        impl = name.removesuffix(CACHED)
        if name == source:
            continue
        state = converters.convert(out.states[source], src=source, dst=impl, cfg=cfg, component=component)
        out.states[name] = state
        if impl == "hf":
            module: object = origin.build_hf(component, cfg, dtype=TORCH_DTYPES[dtype])
            converters.load_torch(module, state)
        elif impl == "kyutai":
            module = origin.build_kyutai(component, cfg, dtype=TORCH_DTYPES[dtype])
            converters.load_torch(module, state)
        elif impl == "ref":
            module = build_ref(component, cfg, dtype)
            converters.load_torch(module, state)
        elif impl == "flax":
            module = build_flax(component, cfg, dtype)
            converters.load_flax(module, state)
        else:
            raise ValueError(f"unknown implementation {impl!r}")
        out.modules[name] = module
    return out


def _torch_idx(layer_idx: object) -> object:
    return torch.from_numpy(np.asarray(layer_idx)) if isinstance(layer_idx, np.ndarray) else layer_idx


def _jax_idx(layer_idx: object) -> object:
    return jnp.asarray(layer_idx) if isinstance(layer_idx, np.ndarray) else layer_idx


def run(impls: Implementations, impl: str, case: Case) -> object:
    if impl.endswith(CACHED):
        return run_cached(impls, impl, case)
    comp, cfg, module = impls.component, impls.cfg, impls.modules[impl]
    if impl in ("hf", "kyutai", "ref"):
        x = torch.from_numpy(case.x).to(TORCH_DTYPES[impls.dtype])
        positions = torch.from_numpy(case.positions)
        with torch.no_grad():
            if impl == "hf":
                idx = case.layer_idx
                if comp == "flexible_linear" or cfg.flexible:
                    idx = _torch_idx(np.asarray(idx)) if idx is not None else None
                return origin.call_hf(comp, module, x, cfg, positions=positions, layer_idx=idx)
            if impl == "kyutai":
                return origin.call_kyutai(comp, module, x, cfg, positions=positions)
            return _call(comp, module, x, positions, _torch_idx(case.layer_idx), cfg)
    x = jnp.asarray(case.x, JAX_DTYPES[impls.dtype])
    return _call(comp, module, x, jnp.asarray(case.positions), _jax_idx(case.layer_idx), cfg)


def _call(component: str, module, x, positions, layer_idx, cfg: TransformerConfig):
    """Our own (ref or flax) calling convention, identical on both sides."""
    if component == "flexible_linear":
        return module(x, layer_idx=layer_idx)
    if component == "rmsnorm":
        return module(x)
    if component == "gating_mlp":
        return module(x, layer_idx=layer_idx if cfg.flexible else None)
    if component == "rope":
        return module(x, positions=positions)
    idx = layer_idx if cfg.flexible else None
    return module(x, positions=positions, layer_idx=idx)[0]


def _step_idx(layer_idx: object, t: int) -> object:
    """The layer_idx of step t when a flexible layer runs one position at a time."""
    if layer_idx is None:
        return t
    if isinstance(layer_idx, np.ndarray) and layer_idx.ndim == 1:
        return layer_idx[t : t + 1]
    return layer_idx


def run_cached(impls: Implementations, impl: str, case: Case) -> object:
    """Decodes the case one position at a time through a KV ring cache of capacity = context (or T if unbounded)."""
    base, cfg = impl.removesuffix(CACHED), impls.cfg
    if impls.component not in ("attention", "decoder_layer"):
        raise ValueError(f"{impl}: only attention and decoder_layer have a KV cache")
    module, (batch, length, _) = impls.modules[impl], case.x.shape
    capacity = cfg.context or length
    outs = []
    if base == "ref":
        cache = models_ref.KVCache.init(
            batch, capacity, cfg.num_kv_heads, cfg.head_dim, dtype=TORCH_DTYPES[impls.dtype]
        )
        x, positions = torch.from_numpy(case.x).to(TORCH_DTYPES[impls.dtype]), torch.from_numpy(case.positions)
        with torch.no_grad():
            for t in range(length):
                idx = _torch_idx(_step_idx(case.layer_idx, t)) if cfg.flexible else None
                y, cache = module(x[:, t : t + 1], positions=positions[:, t : t + 1], layer_idx=idx, cache=cache)
                outs.append(y)
        return torch.cat(outs, dim=1)
    cache = models_flax.KVCache.init(batch, capacity, cfg.num_kv_heads, cfg.head_dim, dtype=JAX_DTYPES[impls.dtype])
    x, positions = jnp.asarray(case.x, JAX_DTYPES[impls.dtype]), jnp.asarray(case.positions)
    for t in range(length):
        idx = _jax_idx(_step_idx(case.layer_idx, t)) if cfg.flexible else None
        y, cache = module(x[:, t : t + 1], positions=positions[:, t : t + 1], layer_idx=idx, cache=cache)
        outs.append(y)
    return jnp.concatenate(outs, axis=1)
