"""Reading a traced program's equations: what a CPU run cannot show (parity/test_precision.py uses it).

`walk` lists every equation of a jaxpr and, recursively, of its sub-jaxprs (jit, scan, cond, while, custom_jvp/vjp,
Pallas kernel bodies), each with the port's frames that made it and the float32 region (`ZONES`) it sits in.
`precision_problems` names float32 dots not at the expected precision and reduced-precision dots that do not
accumulate in float32; `float32_problems` names transcendentals, reductions, divisions and dots computed in a float
narrower than float32 anywhere, and any arithmetic or loop state that narrow inside a float32 region. `trace` makes the
ops of a function on abstract arguments, bf16 models through the accelerator branch of `models_flax.linear.einsum`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import models_flax.linear

ROOT = Path(__file__).resolve().parents[2]
F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
HIGHEST, DEFAULT, HIGH = jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT, jax.lax.Precision.HIGH

# --- walking a jaxpr ------------------------------------------------------------------------------------------------

# (file, function) -> the float32 region it computes. A function's qualname, before any ".<locals>".
ZONES = {
    ("rope.py", "inverse_frequencies"): "rope angles",
    ("rope.py", "rotation_angles"): "rope angles",
    ("rope.py", "RotaryEmbedding.__call__"): "rope rotation",
    ("norm.py", "RMSNorm.__call__"): "RMSNorm",
    ("attention.py", "blockwise_attention"): "attention scores and softmax",
    ("flash_attention.py", "attend_blocks"): "kernel online softmax",
    ("flash_attention.py", "attend_block"): "kernel online softmax",
    ("flash_attention.py", "sum_rows"): "kernel no-key fallback",
    ("flash_attention.py", "_prefill_kernel"): "prefill kernel",
    ("decode.py", "_decode_kernel"): "decode kernel",
    ("decode.py", "combine_splits"): "decode split combine",
    ("mosaic.py", "_kernel"): "Mosaic kernel",
    ("loss.py", "_cross_entropy"): "loss log-softmax",
}
# Computes in its operands' dtype wherever it sits: must be float32 anywhere in a model.
MATH = {
    "exp", "exp2", "log", "log1p", "expm1", "rsqrt", "sqrt", "sin", "cos", "tan", "logistic", "tanh", "erf", "erf_inv",
    "pow", "integer_pow", "square", "div", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "cumsum",
    "cumlogsumexp", "cummax", "argmax", "argmin", "dot_general",
}  # fmt: skip
ARITHMETIC = MATH | {"add", "add_any", "sub", "mul", "neg", "max", "min", "abs", "rem", "atan2"}  # inside a ZONE


@dataclass(frozen=True)
class Op:
    """One equation of a traced program. path: the enclosing primitives ("jit(_flash_attention)/pallas_call(...)/
    while"); where: the port's frames that made it, outermost first (an enclosing one's for a cached sub-jaxpr)."""

    eqn: jax.extend.core.JaxprEqn
    path: str
    where: str
    zone: str | None

    @property
    def name(self) -> str:
        return self.eqn.primitive.name

    def describe(self) -> str:
        """ "in <zone> at <frames> [<enclosing primitives>]"."""
        zone = f"in {self.zone} " if self.zone else ""
        return f"{zone}at {self.where or '?'} [{self.path or 'top level'}]"


def _frames(eqn) -> list[tuple[str, int, str]]:
    """(file relative to the repo, line, qualname) of the port's and the tests' frames, outermost first."""
    tb = eqn.source_info.traceback
    frames = [] if tb is None else tb.frames
    out = []
    for frame in reversed(frames):
        path = Path(frame.file_name)
        if path.is_relative_to(ROOT) and path.parts[len(ROOT.parts)] in ("models_flax", "parity"):
            out.append((str(path.relative_to(ROOT)), frame.line_num, frame.function_name))
    return out


def walk(closed, *, path: str = "", where: str = "", zone: str | None = None) -> list[Op]:
    """Every equation of `closed` and, recursively, of its sub-jaxprs (a zone holds for everything under it)."""
    jaxpr = getattr(closed, "jaxpr", closed)
    ops = []
    for eqn in jaxpr.eqns:
        frames = _frames(eqn)
        port = [f for f in frames if f[0].startswith("models_flax")][-5:] or frames[-1:]  # else: a test's own code
        here = " > ".join(f"{Path(f).name}:{line} {fn}" for f, line, fn in port) or where
        zones = [ZONES.get((Path(f).name, fn.split(".<locals>")[0])) for f, _, fn in frames]
        inner = next((z for z in reversed(zones) if z), zone)  # its own innermost region, else the enclosing one
        ops.append(Op(eqn, path, here, inner))
        label = eqn.params.get("name")
        step = f"{eqn.primitive.name}({label})" if isinstance(label, str) else eqn.primitive.name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            ops += walk(sub, path=f"{path}/{step}" if path else step, where=here, zone=inner)
    return ops


def floats(variables) -> list[np.dtype]:
    dtypes = [getattr(v.aval, "dtype", None) for v in variables]
    return [d for d in dtypes if d is not None and jnp.issubdtype(d, jnp.floating)]


def carries(eqn) -> list:
    """The values a loop carries from step to step (a cond: its outputs): the kernels' running state."""
    p = eqn.params
    if eqn.primitive.name == "while":
        return eqn.invars[p["cond_nconsts"] + p["body_nconsts"] :]
    if eqn.primitive.name == "scan":
        return eqn.invars[p["num_consts"] : p["num_consts"] + p["num_carry"]]
    return eqn.outvars if eqn.primitive.name == "cond" else []


# --- the checks -----------------------------------------------------------------------------------------------------


def precision_problems(ops: list[Op], precision) -> list[str]:
    """float32 dots not at `precision`; reduced-precision dots that do not accumulate in float32."""
    expected = None if precision is None else (jax.lax.Precision(precision),) * 2
    problems = []
    for op in ops:
        if op.name != "dot_general":
            continue
        ins, out = floats(op.eqn.invars), floats(op.eqn.outvars)
        if F32 in ins and op.eqn.params["precision"] != expected:
            problems.append(f"float32 dot at precision {op.eqn.params['precision']}, not {expected} {op.describe()}")
        if any(d.itemsize < 4 for d in ins) and out != [F32]:
            problems.append(f"{ins[0]} dot accumulates in {out[0]}, not float32, {op.describe()}")
    return problems


def float32_problems(ops: list[Op]) -> list[str]:
    """MATH anywhere, and ARITHMETIC and loop state inside a float32 zone, computed in a float narrower than f32."""
    problems = []
    for op in ops:
        computed = floats(op.eqn.outvars) or floats(op.eqn.invars)  # a dot's result is its accumulator
        narrow = [d for d in computed if d.itemsize < 4]
        if narrow and (op.name in MATH or (op.zone and op.name in ARITHMETIC)):
            problems.append(f"{op.name} computes in {narrow[0]} {op.describe()}")
        state = [d for d in floats(carries(op.eqn)) if d.itemsize < 4]
        if op.zone and state:
            problems.append(f"{op.name} carries {state[0]} state {op.describe()}")
    return problems


# --- tracing ---------------------------------------------------------------------------------------------------------


class _AcceleratorJax:
    """models_flax.linear's view of jax on an accelerator: its einsum keeps bf16 operands (bf16 x bf16 -> f32 dots)."""

    def __getattr__(self, name):
        return getattr(jax, name)

    @staticmethod
    def default_backend() -> str:
        return "gpu"


def trace(fn, *args, dtype=F32) -> list[Op]:
    """The ops of fn(*args) (abstract arguments), bf16 through the accelerator branch of linear.einsum."""
    with pytest.MonkeyPatch.context() as mp:
        if jnp.dtype(dtype) == BF16:
            mp.setattr(models_flax.linear, "jax", _AcceleratorJax())
        return walk(jax.make_jaxpr(fn)(*args))
