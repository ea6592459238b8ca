"""Precision, read from the jaxprs: what a CPU run cannot show (issue 17, classes 7, 8 and the structural half of 1).

On CPU a float32 matmul is exact whatever its `precision`, so a port that drops `precision=` passes every fp32
comparison here and runs TF32 (or bf16 passes) on an accelerator; and a bf16 model's float32 islands (rope angles,
norms, scores, softmax, the loss) only show in numbers where the rounding happens to be large. So these tests trace
(never compile) the port and read the equations, walking every sub-jaxpr (jit, scan, cond, while, custom_jvp/vjp and
the Pallas kernels' bodies):

- matmul precision: every float32 dot_general carries the precision the model was built with (HIGHEST, DEFAULT,
  HIGH), and every reduced-precision dot accumulates in float32 (preferred_element_type), in each layer, the LM
  forward, the streaming step (`Streamer.step`'s program) and both kernels. bf16 models are traced as on an
  accelerator: on CPU `models_flax.linear.einsum` upcasts bf16 operands (XLA:CPU has no bf16 x bf16 -> f32 dot), so
  only its accelerator branch has bf16 dots to check.
- float32 math: in a bf16 model no transcendental, reduction, division or dot computes in bf16 anywhere, and inside
  the float32 regions (rope, RMSNorm, attention scores and softmax, the kernels' online softmax, the loss's
  log-softmax) no arithmetic at all does, nor does a loop carry or cond output (the kernels' running max,
  denominator and accumulator). Residual adds and the MLP's gating product may stay bf16 (torch does the same).
The kernels' own bodies (scores, online-softmax state, and the numbers they give on scores that need float32) are
parity/test_kernel_precision.py's.
Every check has a planted bug next to it (a monkeypatch that drops `precision=` or computes one thing in bf16) that it
must report, naming the op and where it sits (the port's frames, outermost first, and the enclosing primitives).
"""

from __future__ import annotations

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import pallas as pl

import models_flax.attention
import models_flax.kernels.flash_attention as flash_module
import models_flax.linear
import models_flax.norm
import models_flax.rope
from models_flax.attention import IMPLS
from models_flax.cache import KVCache
from models_flax.layer import DecoderLayer
from models_flax.linear import FlexibleLinear, Linear
from models_flax.lm import LM, LMOutput
from models_flax.loss import lm_loss
from models_flax.mlp import GatingMLP
from models_flax.norm import RMSNorm
from models_flax.rope import RotaryEmbedding
from models_flax.streaming import Streamer
from moshi_spec import LMConfig, TransformerConfig
from parity.harness.jaxpr_checks import (
    BF16,
    DEFAULT,
    F32,
    HIGH,
    HIGHEST,
    Op,
    float32_problems,
    floats,
    precision_problems,
    trace,
    walk,
)


def _assert_reported(problems: list[str], *fragments: str) -> None:
    """A planted bug: some problem must name every fragment (the op, its dtype, its file and function)."""
    assert any(all(f in p for f in fragments) for p in problems), f"no problem names {fragments}: {problems}"


# --- what is traced -------------------------------------------------------------------------------------------------


def _abstract(make):
    """(graphdef, abstract state) of the module `make(rngs)` builds: no parameter is initialized."""
    return nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


LAYER_CFG = TransformerConfig(dim=32, num_heads=4, num_layers=1, ffn_dim=64, context=3, num_kv_heads_override=2)
FLEX_CFG = LAYER_CFG.replace(flexible=True, num_codebooks=3, rope=False)
LAYERS = (
    "linear", "flexible_linear", "rmsnorm", "rope", "gating_mlp", "flexible_gating_mlp", "attention[xla]",
    "attention[pallas]", "attention[xla,cached]", "attention[pallas,cached]", "decoder_layer[xla]",
    "decoder_layer[pallas]", "flexible_decoder_layer[xla]",
)  # fmt: skip


def layer_ops(layer: str, dtype, precision) -> list[Op]:
    """One layer's ops on (2, T, D) inputs (flexible layers on their 3 codebooks, cached attention on one step)."""
    kw = dict(dtype=dtype, param_dtype=dtype, precision=precision)
    cfg = FLEX_CFG if layer.startswith("flexible") else LAYER_CFG
    length = 3 if cfg.flexible else 5
    x, pos = _sds((2, length, cfg.dim), dtype), _sds((2, length), jnp.int32)
    impl = "pallas" if "pallas" in layer else "xla"
    call = lambda m, x: m(x)  # noqa: E731
    with_positions = lambda m, x, p: m(x, positions=p)  # noqa: E731
    if layer == "linear":
        make, args = lambda rngs: Linear(cfg.dim, cfg.q_dim, **kw, rngs=rngs), (x,)
    elif layer == "flexible_linear":
        make, args = lambda rngs: FlexibleLinear(cfg.dim, cfg.dim, cfg.num_codebooks, **kw, rngs=rngs), (x,)
    elif layer == "rmsnorm":
        make, args = lambda _: RMSNorm(cfg.dim, eps=1e-8, dtype=dtype, param_dtype=dtype), (x,)
    elif layer == "rope":
        make, call = lambda _: RotaryEmbedding(cfg.head_dim, theta=1e4, layout="half"), with_positions
        args = (_sds((2, length, cfg.num_heads, cfg.head_dim), dtype), pos)
    elif layer.endswith("gating_mlp"):
        make, args = lambda rngs: GatingMLP(cfg, **kw, rngs=rngs), (x,)
    elif layer.endswith("cached]"):
        make = lambda rngs: models_flax.attention.Attention(cfg, impl=impl, **kw, rngs=rngs)  # noqa: E731
        cache = jax.eval_shape(lambda: KVCache.init(2, 8, cfg.num_kv_heads, cfg.head_dim, dtype=dtype))
        call = lambda m, x, p, c: m(x, positions=p, cache=c)  # noqa: E731
        args = (_sds((2, 1, cfg.dim), dtype), _sds((2, 1), jnp.int32), cache)
    else:
        module = DecoderLayer if "decoder_layer" in layer else models_flax.attention.Attention
        make, call, args = lambda rngs: module(cfg, impl=impl, **kw, rngs=rngs), with_positions, (x, pos)
    graphdef, state = _abstract(make)
    return trace(lambda state, *args: call(nnx.merge(graphdef, state), *args), state, *args, dtype=dtype)


_TINY = LMConfig.tiny()
TINY = _TINY.replace(  # the tiny preset with one layer per transformer and two depth codebooks: a third of the trace
    temporal=_TINY.temporal.replace(num_layers=1),
    depth=_TINY.depth.replace(num_layers=1, num_codebooks=2),
    dep_q=2,
    n_q=4,
    delays=(0, 0, 1, 1, 1),
)


@functools.cache
def lm_ops(program: str, dtype, precision, impl: str) -> list[Op]:
    """The tiny LM's forward ("lm", on (1, 1 + n_q, 5) codes) or one streaming step ("stream": the program
    `Streamer.step` runs, traced from the Streamer's own jit)."""
    graphdef, state = _abstract(
        lambda rngs: LM(TINY, dtype=dtype, param_dtype=dtype, precision=precision, impl=impl, rngs=rngs)
    )
    if program == "lm":
        codes = _sds((1, 1 + TINY.n_q, 5), jnp.int32)
        return trace(lambda state, codes: nnx.merge(graphdef, state)(codes), state, codes, dtype=dtype)
    # A Streamer slices its weights on the host, so it gets zeros (numpy: nothing compiles) instead of abstract ones.
    streamer = Streamer(nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)))
    stream = jax.eval_shape(lambda: streamer.init_state(1))
    codes, key = _sds((1, streamer.user_streams), jnp.int32), jax.eval_shape(lambda: jax.random.key(0))
    return trace(streamer._step, streamer.params, streamer.depth_weights, stream, codes, key, dtype=dtype)


def loss_ops(dtype) -> list[Op]:
    """lm_loss on the tiny LM's output shapes, logits in `dtype`."""
    b, t = 2, 5
    logits = _sds((b, 1, t, TINY.text_card), dtype), _sds((b, TINY.dep_q, t, TINY.card), dtype)
    masks = _sds((b, 1, t), jnp.bool_), _sds((b, TINY.dep_q, t), jnp.bool_)
    codes = _sds((b, 1 + TINY.n_q, t), jnp.int32)
    loss = lambda text, audio, tm, am, codes: lm_loss(LMOutput(text, tm, audio, am), codes)  # noqa: E731
    return trace(loss, *logits, *masks, codes)


# --- the walker -----------------------------------------------------------------------------------------------------


def test_walk_reaches_every_kind_of_subjaxpr():
    """A dot without precision inside jit, scan, cond, while, custom_jvp, custom_vjp and a Pallas kernel: each is
    reported, with its enclosing primitives."""

    def dot(x):
        return jax.lax.dot_general(x, x, (((1,), (0,)), ((), ())))

    jvp = jax.custom_jvp(dot)
    jvp.defjvp(lambda primals, tangents: (dot(primals[0]), tangents[0]))
    vjp = jax.custom_vjp(dot)
    vjp.defvjp(lambda x: (dot(x), x), lambda x, g: (g,))

    def kernel(x_ref, o_ref):
        o_ref[...] = dot(x_ref[...])

    def program(x):
        outs = [
            jax.jit(dot)(x),
            jax.lax.scan(lambda c, _: (dot(c), None), x, length=2)[0],
            jax.lax.cond(x[0, 0] > 0, dot, jnp.sin, x),
            jax.lax.while_loop(lambda c: c[0, 0] < 1, dot, x),
            jvp(x),
            vjp(x),
            pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), interpret=True, name="k")(x),
        ]
        return sum(outs)

    problems = precision_problems(walk(jax.make_jaxpr(program)(jnp.zeros((8, 8)))), HIGHEST)
    paths = [p.rsplit("[", 1)[1] for p in problems]
    for step in ("jit(dot)", "scan", "cond", "while", "custom_jvp_call", "custom_vjp_call", "pallas_call(k)"):
        assert any(step in path for path in paths), f"no dot reported inside {step}: {problems}"
    assert all("test_precision.py" in p for p in problems), problems


# --- matmul precision -----------------------------------------------------------------------------------------------

SETTINGS = [(F32, HIGHEST), (F32, DEFAULT), (F32, HIGH), (BF16, HIGHEST)]


def _dots(ops: list[Op], dtype) -> int:
    return sum(op.name == "dot_general" and dtype in floats(op.eqn.invars) for op in ops)


@pytest.mark.parametrize(("dtype", "precision"), SETTINGS, ids=lambda v: getattr(v, "name", v))
def test_layer_dots_carry_the_precision(dtype, precision):
    """Each layer (XLA and Pallas attention, prefill and cached), in fp32 at three precisions and in bf16."""
    problems, checked = [], 0
    for layer in LAYERS:
        ops = layer_ops(layer, dtype, precision)
        checked += _dots(ops, dtype)
        problems += [f"{layer}: {p}" for p in precision_problems(ops, precision)]
        if dtype == BF16:
            problems += [f"{layer}: {p}" for p in float32_problems(ops)]
    assert problems == []
    assert checked >= 2 * len(LAYERS) - 4  # every layer but norm, rope and linears has at least two dots


MODELS = [(p, d, HIGHEST, impl) for p in ("lm", "stream") for d in (F32, BF16) for impl in IMPLS]


@pytest.mark.parametrize(("program", "dtype", "precision", "impl"), MODELS, ids=lambda v: getattr(v, "name", v))
def test_model_dots_carry_the_precision(program, dtype, precision, impl):
    """The LM forward and the streaming step, XLA and Pallas (prefill and decode kernels)."""
    ops = lm_ops(program, dtype, precision, impl)
    assert precision_problems(ops, precision) == []
    kernel_dots = sum(op.name == "dot_general" and "pallas_call" in op.path for op in ops)
    assert _dots(ops, dtype) > 10 and (kernel_dots > 0) == (impl == "pallas")


# --- float32 math in a bf16 model -----------------------------------------------------------------------------------

REGIONS = {  # program -> the float32 regions it must pass through (so that the check is not vacuous)
    "lm[xla]": {"rope angles", "rope rotation", "RMSNorm", "attention scores and softmax"},
    "lm[pallas]": {"rope angles", "RMSNorm", "kernel online softmax", "prefill kernel", "kernel no-key fallback"},
    "stream[xla]": {"rope angles", "RMSNorm", "attention scores and softmax"},
    "stream[pallas]": {"rope angles", "RMSNorm", "kernel online softmax", "decode kernel", "decode split combine"},
    "loss": {"loss log-softmax"},
}


def _program_ops(program: str) -> list[Op]:
    if program == "loss":
        return loss_ops(BF16)
    name, impl = program.rstrip("]").split("[")
    return lm_ops(name, BF16, HIGHEST, impl)


@pytest.mark.parametrize("program", sorted(REGIONS))
def test_bf16_model_computes_float32_math(program):
    """A bf16 LM forward, streaming step and loss: every transcendental, reduction, division and dot in float32, and
    within the float32 regions every arithmetic op, loop carry and cond output too."""
    ops = _program_ops(program)
    assert float32_problems(ops) == []
    assert REGIONS[program] <= {op.zone for op in ops}
    assert any(op.zone is None and op.name in ("add", "mul") and BF16 in floats(op.eqn.outvars) for op in ops) or (
        program == "loss"
    )  # the trace is a bf16 model's: its residual adds are bf16


# --- negative controls of the structural checks ---------------------------------------------------------------------


def _in_bf16(fn):
    """fn computing in bf16: its float32 array arguments rounded first."""
    narrow = lambda x: x.astype(BF16) if getattr(x, "dtype", None) == F32 else x  # noqa: E731
    return lambda *args, **kw: fn(*map(narrow, args), **kw)


def _dropping_precision(einsum):
    return lambda equation, a, b, *, precision: einsum(equation, a, b, precision=None)


def _accumulating_in_operands(_):
    """linear.einsum without preferred_element_type (and without the CPU upcast): a bf16 dot gives bf16."""
    return lambda equation, a, b, *, precision: jnp.einsum(equation, a, b, precision=precision)


def _trace_layer(layer: str, dtype, precision=HIGHEST):
    return lambda: layer_ops(layer, dtype, precision)


# name -> (module, attribute, bug made from the original, what is traced, which check, what the report must name)
CONTROLS = {
    "xla_precision_dropped": (
        models_flax.attention, "einsum", _dropping_precision, _trace_layer("attention[xla]", F32), "precision",
        ("float32 dot at precision None", "in attention scores and softmax at", "attention.py", "blockwise_attention"),
    ),
    "linear_precision_dropped": (
        models_flax.linear, "einsum", _dropping_precision, _trace_layer("flexible_linear", F32), "precision",
        ("float32 dot at precision None", "linear.py", "FlexibleLinear.__call__"),
    ),
    "kernel_precision_dropped": (
        flash_module, "dot_precision", lambda _: lambda dtype, precision: None,
        _trace_layer("attention[pallas,cached]", F32), "precision",
        ("float32 dot at precision None", "attend_block", "pallas_call(flash_attention_decode)"),
    ),
    "bf16_dot_accumulates_in_bf16": (
        models_flax.linear, "einsum", _accumulating_in_operands, _trace_layer("linear", BF16), "precision",
        ("bfloat16 dot accumulates in bfloat16", "linear.py", "Linear.__call__"),
    ),
    "rope_angles_in_bf16": (
        models_flax.rope, "rotation_angles", lambda f: lambda *a: f(*a).astype(BF16), _trace_layer("rope", BF16),
        "float32", ("cos computes in bfloat16 in rope rotation at", "rope.py", "RotaryEmbedding.__call__"),
    ),
    "norm_mean_of_squares_in_bf16": (
        jnp, "mean", _in_bf16, _trace_layer("rmsnorm", BF16), "float32",
        ("rsqrt computes in bfloat16 in RMSNorm at", "norm.py", "RMSNorm.__call__"),
    ),
    "attention_scores_in_bf16": (
        models_flax.attention, "einsum", _accumulating_in_operands, _trace_layer("attention[xla]", BF16), "float32",
        ("dot_general computes in bfloat16 in attention scores and softmax at", "attention.py", "blockwise_attention"),
    ),
    "softmax_in_bf16": (
        jax.nn, "softmax", _in_bf16, _trace_layer("decoder_layer[xla]", BF16), "float32",
        ("exp computes in bfloat16 in attention scores and softmax at", "layer.py", "blockwise_attention"),
    ),
    "loss_log_softmax_in_bf16": (
        jax.nn, "log_softmax", _in_bf16, lambda: loss_ops(BF16), "float32",
        ("exp computes in bfloat16 in loss log-softmax at", "loss.py", "_cross_entropy"),
    ),
}  # fmt: skip
CHECKS = {"precision": lambda ops: precision_problems(ops, HIGHEST), "float32": float32_problems}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_negative_control(name, monkeypatch):
    """Each planted bug is reported by the check that guards it, naming the op, its dtype, file and function; the
    same trace passes unpatched. (None of these patches reaches a jitted function, so no trace cache outlives it.)"""
    module, attribute, bug, traced, check, fragments = CONTROLS[name]
    assert CHECKS[check](traced()) == []
    monkeypatch.setattr(module, attribute, bug(getattr(module, attribute)))
    _assert_reported(CHECKS[check](traced()), *fragments)
