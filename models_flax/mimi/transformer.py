"""Mimi's transformers (kyutai `ProjectedTransformer` with identity projections around a `StreamingTransformer`):
pre-norm layers with LayerNorm, causal self-attention over a context window with interleaved rope, a plain GELU FFN
and learnt LayerScales. Channels-last (B, T, D) inside; the model transposes SEANet's (B, D, T) around it.

Attention is the shared `models_flax.attention.Attention` (q/k/v/o projections, kyutai's interleaved rope, float32
softmax); streaming uses its `KVCache` ring. A ring of `context` slots is exact only for one position per step (the
chunk's later keys overwrite slots its earlier queries still see; kyutai's RingKVCache has that capacity and so
drops up to T - 1 keys per T-position streaming chunk), so `init_state` takes a capacity (default context +
resample_stride - 1, one code frame of encoder steps, set by the model) and `step` feeds a chunk in pieces of at most
capacity - context + 1 positions: exact for any chunk length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from models_flax.attention import Attention
from models_flax.cache import KVCache
from models_flax.checks import check_dtype, check_input
from models_flax.layer_scale import LayerScale
from models_flax.mlp import PlainMLP
from models_flax.norm import LayerNorm
from moshi_spec import TransformerConfig


class MimiTransformerLayer(nnx.Module):
    """x + layer_scale_1(self_attn(norm1(x))), then + layer_scale_2(mlp(norm2(.)))."""

    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        layer_scale: float = 0.01,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        norm = dict(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)
        scale = dict(init=layer_scale, dtype=dtype, param_dtype=param_dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.norm1 = LayerNorm(cfg.dim, **norm)
        self.self_attn = Attention(cfg, **kw)
        self.layer_scale_1 = LayerScale(cfg.dim, **scale)
        self.norm2 = LayerNorm(cfg.dim, **norm)
        self.mlp = PlainMLP(cfg, **kw)
        self.layer_scale_2 = LayerScale(cfg.dim, **scale)

    def __call__(
        self, x: jax.Array, *, positions: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        update, cache = self.self_attn(self.norm1(x), positions=positions, cache=cache)
        x = x + self.layer_scale_1(update)
        x = x + self.layer_scale_2(self.mlp(self.norm2(x)))
        return x, cache


@struct.dataclass
class TransformerState:
    """A streaming transformer's carry: one KV ring cache per layer (head-major (B, H, capacity, head_dim)) and
    offsets (B,) int32, the position of each row's next step."""

    caches: list[KVCache]
    offsets: jax.Array

    @property
    def batch(self) -> int:
        return self.offsets.shape[0]

    @property
    def capacity(self) -> int:
        return self.caches[0].capacity


class MimiTransformer(nnx.Module):
    """A stack of MimiTransformerLayer over (B, T, D); `layers` an nnx.List."""

    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        layer_scale: float = 0.01,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"MimiTransformer: expected a TransformerConfig, got {type(cfg).__name__}")
        if cfg.flexible:
            raise ValueError("MimiTransformer: cfg.flexible must be False (one weight set per layer)")
        self.cfg = cfg
        self.dtype = check_dtype("MimiTransformer", dtype)
        kw = dict(layer_scale=layer_scale, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.layers = nnx.List([MimiTransformerLayer(cfg, **kw) for _ in range(cfg.num_layers)])

    def __call__(
        self,
        x: jax.Array,
        *,
        positions: jax.Array | None = None,
        caches: list[KVCache] | None = None,
        capture: dict[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, list[KVCache] | None]:
        """x (B, T, D) at positions (B, T) (default arange(T) for every row) -> (y (B, T, D), updated caches).

        `capture`, a dict, receives each layer's output (B, T, D) as "layers.{l}"."""
        check_input("MimiTransformer", x, rank=3, last=self.cfg.dim, dtype=self.dtype)
        batch, length, _ = x.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if caches is not None and len(caches) != len(self.layers):
            raise ValueError(f"MimiTransformer: {len(caches)} caches for {len(self.layers)} layers")
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, cache = layer(x, positions=positions, cache=None if caches is None else caches[i])
            new_caches.append(cache)
            if capture is not None:
                capture[f"layers.{i}"] = x
        return x, (None if caches is None else new_caches)

    def init_state(self, batch: int, *, capacity: int | None = None) -> TransformerState:
        """Empty caches of `capacity` slots (default the context: then `step` feeds one position at a time)."""
        cfg = self.cfg
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"MimiTransformer.init_state: batch must be a positive int, got {batch!r}")
        if cfg.context is None:
            raise ValueError("MimiTransformer.init_state: streaming needs a bounded context (cfg.context is None)")
        capacity = cfg.context if capacity is None else capacity
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < cfg.context:
            raise ValueError(
                f"MimiTransformer.init_state: capacity must be an int >= context {cfg.context}, got {capacity!r}"
            )
        caches = [
            KVCache.init(batch, capacity, cfg.num_kv_heads, cfg.head_dim, dtype=self.dtype)
            for _ in range(cfg.num_layers)
        ]
        return TransformerState(caches, jnp.zeros((batch,), jnp.int32))

    def step(self, x: jax.Array, state: TransformerState) -> tuple[jax.Array, TransformerState]:
        """One streaming chunk x (B, T, D) at each row's running offset -> (y (B, T, D), new state).

        Fed in pieces of at most capacity - context + 1 positions, so that no key a query sees is overwritten."""
        check_input("MimiTransformer.step", x, rank=3, last=self.cfg.dim, dtype=self.dtype)
        if state.batch != x.shape[0]:
            raise ValueError(f"MimiTransformer.step: the state has batch {state.batch}, x has shape {x.shape}")
        piece = state.capacity - self.cfg.context + 1
        caches, offsets, outputs = state.caches, state.offsets, []
        for start in range(0, x.shape[1], piece):
            chunk = x[:, start : start + piece]
            positions = offsets[:, None] + jnp.arange(chunk.shape[1], dtype=jnp.int32)
            y, caches = self(chunk, positions=positions, caches=caches)
            outputs.append(y)
            offsets = offsets + chunk.shape[1]
        y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)
        return y, TransformerState(caches, offsets)
