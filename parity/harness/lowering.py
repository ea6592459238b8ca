"""Lowering without the hardware: `jax.export` of the kernels, the 7B LM forward and the 7B streaming step for TPU
(Mosaic) and CUDA (Triton) from any host, on abstract shapes only (`jax.ShapeDtypeStruct`), so the 7B needs no memory.

What an export proves: the program traces and lowers for that platform, Pallas' block-shape rules for it hold (Mosaic's
(8, 128) tiling), and the platform's kernel source is the one in the program (`jax.lax.platform_dependent` keeps one
branch). What it does not: the platform compiler's own passes (Mosaic's vector layouts, Triton's codegen) run only on
the device, and nothing executes. The README's Platforms table says which features are verified how.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from models_flax import sharding, streaming
from models_flax.kernels.decode import decode_attention
from models_flax.kernels.flash_attention import flash_attention
from models_flax.lm import LM
from moshi_spec import LMConfig

PLATFORMS = ("tpu", "cuda")
TRITON_CALL = "__gpu$xla.gpu.triton"  # the custom call of a Pallas Triton kernel
MOSAIC_CALL = "tpu_custom_call"  # the custom call of a Pallas Mosaic kernel
# jax.export refuses custom calls without a compatibility guarantee; Triton's has none (a Mosaic call has one). The
# export here is a lowering check, never serialized for later use, so the check is disabled for that target only.
_DISABLED = {"cuda": (jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL),), "tpu": ()}

# Moshi's attention at its real sizes (LMConfig.moshi_7b): the temporal transformer attends over a 3000-slot cache
# with 32 heads of 128, the depth transformer over its 8 codebook steps with 16 heads of 64.
ATTENTION_SHAPES = {
    "temporal": dict(heads=32, kv_heads=32, head_dim=128, length=3000, context=3000),
    "depth": dict(heads=16, kv_heads=16, head_dim=64, length=8, context=None),
}


def export(fn, *args, platform: str) -> jax.export.Exported:
    """`jax.export` of jit(fn) at abstract args for one platform."""
    return jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=_DISABLED[platform])(*args)


def kernel_custom_calls(exported: jax.export.Exported) -> dict[str, int]:
    """How many Mosaic and Triton kernel calls the exported program holds."""
    text = exported.mlir_module()
    return {"mosaic": text.count(f"@{MOSAIC_CALL}"), "triton": text.count(f"@{TRITON_CALL}")}


def attention_export(kernel: str, stack: str, platform: str, *, dtype=jnp.bfloat16) -> jax.export.Exported:
    """The prefill kernel over a whole sequence, or the decode kernel for one step against a full cache (in the
    KVCache layout), at the real shapes of the temporal or depth stack."""
    s = ATTENTION_SHAPES[stack]
    batch, length = 1, s["length"]
    steps = length if kernel == "prefill" else 1
    q = jax.ShapeDtypeStruct((batch, steps, s["heads"], s["head_dim"]), dtype)
    q_pos = jax.ShapeDtypeStruct((batch, steps), jnp.int32)
    k_pos = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    if kernel == "prefill":
        kv = jax.ShapeDtypeStruct((batch, length, s["kv_heads"], s["head_dim"]), dtype)
        fn = functools.partial(flash_attention, context=s["context"], interpret=False)
    else:
        kv = jax.ShapeDtypeStruct((batch, s["kv_heads"], length, s["head_dim"]), dtype)
        fn = functools.partial(decode_attention, context=s["context"], kv_layout="BHSD", interpret=False)
    return export(
        lambda q, k, v, qp, kp: fn(q, k, v, q_positions=qp, k_positions=kp), q, kv, kv, q_pos, k_pos, platform=platform
    )


@functools.cache
def abstract_model(cfg: LMConfig, impl: str) -> LM:
    """The bf16 LM built abstractly (`nnx.eval_shape`: shapes, no memory); shared, never modified."""
    return nnx.eval_shape(lambda: LM(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, impl=impl, rngs=nnx.Rngs(0)))


def abstract_lm(cfg: LMConfig, impl: str):
    """(graphdef, Param state, other state) of the abstract bf16 LM."""
    return nnx.split(abstract_model(cfg, impl), nnx.Param, ...)


def _placed(tree, shardings):
    """Abstract arrays carrying the given shardings (a tree shaped like `tree`)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _on_mesh(params, mesh):
    """Abstract parameters carrying their rule's sharding on `mesh`."""
    return _placed(params, sharding.param_shardings(params, mesh))


def lm_forward_export(
    cfg: LMConfig, impl: str, platform: str, *, batch: int = 1, frames: int = 16, mesh=None
) -> jax.export.Exported:
    """The LM's full forward (text logits) on (batch, 1 + n_q, frames) codes; with an abstract ('dp', 'fsdp') mesh, the
    parameters sharded by models_flax.sharding's rules and the batch over both axes, traced in that mesh's context
    (where the Pallas kernels run in a shard_map over the batch: models_flax/kernels/dispatch.py)."""
    graphdef, params, other = abstract_lm(cfg, impl)
    codes = jax.ShapeDtypeStruct((batch, 1 + cfg.n_q, frames), jnp.int32)
    if mesh is not None:
        params = _on_mesh(params, mesh)
        codes = jax.ShapeDtypeStruct(codes.shape, codes.dtype, sharding=NamedSharding(mesh, sharding.DATA_SPEC))

    def forward(params, other, codes):
        return nnx.merge(graphdef, params, other)(codes).text_logits

    if mesh is None:
        return export(forward, params, other, codes, platform=platform)
    with jax.sharding.use_abstract_mesh(mesh):
        return export(forward, params, other, codes, platform=platform)


def stream_step_export(cfg: LMConfig, impl: str, platform: str, *, batch: int = 1, mesh=None) -> jax.export.Exported:
    """`Streamer.step`'s compiled program (`streaming._step_reading`: temporal step against full-size ring caches,
    the depth transformer's dep_q steps, sampling) with kyutai's default samplers; with an abstract ('dp', 'fsdp')
    mesh, placed as `Streamer(mesh=)` places it (weights by the sharding rules, caches by kv heads, the Pallas
    kernels in shard_maps over the caches' heads)."""
    graphdef, _, _ = nnx.split(abstract_model(cfg, impl), streaming.is_depth_weight, ...)
    depth_weights, params = _stream_weights(cfg)
    # all that Streamer.init_state reads (the placement on a mesh is given to the abstract state below)
    holder = SimpleNamespace(cfg=cfg, dtype=jnp.bfloat16, mesh=mesh, _placed=lambda state: state)
    state = jax.eval_shape(lambda: streaming.Streamer.init_state(holder, batch))
    if mesh is not None:
        params, depth_weights = _on_mesh(params, mesh), [_on_mesh(w, mesh) for w in depth_weights]
        state = _placed(state, streaming.state_shardings(mesh, state))
    codes = jax.ShapeDtypeStruct((batch, cfg.n_q - cfg.dep_q), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    step = functools.partial(streaming._step_reading, graphdef, streaming.TEXT, streaming.AUDIO, mesh)
    return export(step, params, depth_weights, state, codes, key, platform=platform)


@functools.cache
def _stream_weights(cfg: LMConfig):
    """The abstract (per-codebook depth kernels, other parameters) of `streaming.split_codebooks` (the attention
    implementation changes no parameter)."""
    build = functools.partial(LM, cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    return jax.eval_shape(lambda: streaming.split_codebooks(build(rngs=nnx.Rngs(0)))[1:])


__all__ = [
    "ATTENTION_SHAPES",
    "PLATFORMS",
    "abstract_lm",
    "abstract_model",
    "attention_export",
    "export",
    "kernel_custom_calls",
    "lm_forward_export",
    "stream_step_export",
]
