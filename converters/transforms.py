"""The named transforms that converter tables refer to, in one registry (`TRANSFORMS`, `register_transform`).

Every transform has one signature: `(inputs, cfg) -> outputs`, where `inputs` holds one list of arrays per source
key template of the rule (a template with `{c}` gathers its keys in index order; one without gives a one-element
list) and `outputs` one list per target template. Elementwise transforms are lifted with `_each`. Transforms only move
bits (reshape, transpose, slice, stack, concatenate); they never cast (the one value they read, kyutai's codebook
`_initialized` flag, is checked and dropped, or written as 1). `cfg` is whatever config the component kind uses: each
transform that reads it names the attributes it reads, and none checks its type. Zero-byte placeholders (shape-only
checks, accounting.SHAPE_ONLY) go through every transform; value checks skip them.

Rope layouts (per head, on the output rows of q and k, weight in torch layout (..., out, in)):
    half        rows (i, i + hd/2) form a rotary pair (HF `rotate_half`)
    interleaved rows (2i, 2i + 1) form a rotary pair (kyutai)

Convolution kernels (Mimi): torch Conv1d (out, in/g, K) <-> Flax (K, in/g, out), axes reversed; torch
ConvTranspose1d (in, out/g, K) <-> Flax (K, in, out/g), the kernel axis moved first (models_flax/mimi/conv.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Arrays = list[list[np.ndarray]]
Transform = Callable[[Arrays, Any], Arrays]


def _heads_rows(w: np.ndarray, heads: int) -> tuple[tuple[int, ...], int, int]:
    *lead, out, inp = w.shape
    if out % heads or (out // heads) % 2:
        raise ValueError(f"rope permutation: {out} rows do not split into {heads} heads of even size")
    return tuple(lead), out // heads, inp


def interleaved_to_half(w: np.ndarray, heads: int) -> np.ndarray:
    """Reorders each head's rows from pairs (2i, 2i+1) to pairs (i, i+hd/2): row 2i -> i, row 2i+1 -> hd/2 + i."""
    lead, hd, inp = _heads_rows(w, heads)
    return w.reshape(*lead, heads, hd // 2, 2, inp).swapaxes(-3, -2).reshape(w.shape)


def half_to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of `interleaved_to_half`."""
    lead, hd, inp = _heads_rows(w, heads)
    return w.reshape(*lead, heads, 2, hd // 2, inp).swapaxes(-3, -2).reshape(w.shape)


def _each(fn: Callable[[np.ndarray, Any], np.ndarray]) -> Transform:
    """Lifts a one-array function to a transform of one source template onto one target template."""

    def transform(inputs: Arrays, cfg: Any) -> Arrays:
        (xs,) = inputs
        return [[fn(x, cfg) for x in xs]]

    transform.__doc__ = fn.__doc__
    return transform


def _ref_interleaved(cfg: Any) -> bool:
    """Whether ref/flax weights use the interleaved rope layout (HF always uses half). Reads cfg.rope, .rope_layout."""
    return cfg.rope and cfg.rope_layout == "interleaved"


def _stack(xs: list[np.ndarray], cfg: Any) -> np.ndarray:
    """W per-codebook arrays -> (W, ...) when cfg.flexible; the single array otherwise. Reads cfg.flexible."""
    if cfg.flexible:
        return np.stack(xs)
    if len(xs) != 1:
        raise ValueError(f"a non-flexible config has one weight set, got {len(xs)}")
    return xs[0]


def _unstack(x: np.ndarray, cfg: Any) -> list[np.ndarray]:
    return list(x) if cfg.flexible else [x]


def _unfuse_qkv(inputs: Arrays, cfg: Any) -> Arrays:
    """kyutai `in_projs.{c}` rows [q; k; v] (interleaved rope; half-split with kyutai's rope_concat) -> HF q, k, v
    (half rope), stacked over codebooks.

    Reads cfg.q_dim, .kv_dim, .rope, .rope_concat, .num_heads, .num_kv_heads, .flexible.
    """
    (fused,) = inputs
    Q, KV = cfg.q_dim, cfg.kv_dim
    qs, ks, vs = [], [], []
    for w in fused:
        q, k, v = w[:Q], w[Q : Q + KV], w[Q + KV :]
        if cfg.rope and not cfg.rope_concat:  # kyutai's `rope` pairs (2i, 2i + 1), its `rope_concat` HF's pairs
            q, k = interleaved_to_half(q, cfg.num_heads), interleaved_to_half(k, cfg.num_kv_heads)
        qs.append(q), ks.append(k), vs.append(v)
    return [[_stack(qs, cfg)], [_stack(ks, cfg)], [_stack(vs, cfg)]]


def _fuse_qkv(inputs: Arrays, cfg: Any) -> Arrays:
    """Inverse of `_unfuse_qkv`."""
    (q,), (k,), (v,) = inputs
    fused = []
    for qc, kc, vc in zip(_unstack(q, cfg), _unstack(k, cfg), _unstack(v, cfg), strict=True):
        if cfg.rope and not cfg.rope_concat:
            qc, kc = half_to_interleaved(qc, cfg.num_heads), half_to_interleaved(kc, cfg.num_kv_heads)
        fused.append(np.concatenate([qc, kc, vc], axis=0))
    return [fused]


def _split_steps(inputs: Arrays, cfg: Any) -> Arrays:
    """kyutai legacy fused (W * rows, in), step-major (codebook c at rows c*rows:(c+1)*rows) -> W arrays.

    Reads cfg.weight_sets.
    """
    ((w,),) = inputs
    if w.shape[0] % cfg.weight_sets:
        raise ValueError(f"legacy fused weight of {w.shape[0]} rows does not split into {cfg.weight_sets} codebooks")
    return [list(w.reshape(cfg.weight_sets, -1, *w.shape[1:]))]


def _q_half_to_layout(w: np.ndarray, cfg: Any) -> np.ndarray:
    return half_to_interleaved(w, cfg.num_heads) if _ref_interleaved(cfg) else w


def _k_half_to_layout(w: np.ndarray, cfg: Any) -> np.ndarray:
    return half_to_interleaved(w, cfg.num_kv_heads) if _ref_interleaved(cfg) else w


def _q_layout_to_half(w: np.ndarray, cfg: Any) -> np.ndarray:
    return interleaved_to_half(w, cfg.num_heads) if _ref_interleaved(cfg) else w


def _k_layout_to_half(w: np.ndarray, cfg: Any) -> np.ndarray:
    return interleaved_to_half(w, cfg.num_kv_heads) if _ref_interleaved(cfg) else w


def _split_qkv(inputs: Arrays, cfg: Any) -> Arrays:
    """One fused (Q + 2 KV, in) weight, rows [q; k; v] -> q, k, v, rows untouched (Mimi: kyutai's interleaved rope is
    ours too). Reads cfg.q_dim, .kv_dim."""
    ((w,),) = inputs
    Q, KV = cfg.q_dim, cfg.kv_dim
    if w.shape[0] != Q + 2 * KV:
        raise ValueError(f"fused q/k/v weight has {w.shape[0]} rows, expected q_dim + 2 kv_dim = {Q + 2 * KV}")
    return [[w[:Q]], [w[Q : Q + KV]], [w[Q + KV :]]]


def _join_qkv(inputs: Arrays, cfg: Any) -> Arrays:
    """Inverse of `_split_qkv`."""
    (q,), (k,), (v,) = inputs
    return [[np.concatenate([q, k, v], axis=0)]]


def _require_initialized(flag: np.ndarray, name: str) -> None:
    """Refuses a codebook flag other than 1: a kyutai codebook whose k-means never ran (a freshly built MimiModel) is
    all zeros and encodes everything to code 0. Zero-byte placeholders pass."""
    if flag.dtype.itemsize and not np.all(flag.astype(np.float64) == 1.0):
        raise ValueError(
            f"codebook never initialized: {name} is {flag.astype(np.float64).tolist()}, expected [1.0] (an "
            "untrained kyutai MimiModel: its codebooks encode everything to code 0)"
        )


def _drop_initialized(inputs: Arrays, cfg: Any) -> Arrays:
    """kyutai codebook (`_initialized` (1,), `cluster_usage`) -> `cluster_usage`, refusing a flag other than 1."""
    (flag,), (usage,) = inputs
    _require_initialized(flag, "_initialized")
    return [[usage]]


def _check_initialized(inputs: Arrays, cfg: Any) -> Arrays:
    """A codebook's flag (1,) kept as it is (kyutai `_initialized` <-> HF `initialized`), refusing one other than 1
    either way (HF never reads its flag: a 0 would only surface once back in kyutai)."""
    ((flag,),) = inputs
    _require_initialized(flag, "the codebook flag")
    return [[flag]]


def _add_initialized(inputs: Arrays, cfg: Any) -> Arrays:
    """`cluster_usage` -> kyutai (`_initialized` = [1.0], `cluster_usage`), the flag in the usage's dtype."""
    ((usage,),) = inputs
    flag = np.empty((1,), usage.dtype)
    if usage.dtype.itemsize:
        flag[...] = 1
    return [[flag], [usage]]


def _widths(cfg: Any, sets: int) -> tuple[int, ...]:
    """The fc1 width of each weight set: cfg.ffn_dims (per-set widths that differ), else cfg.ffn_dim each."""
    return getattr(cfg, "ffn_dims", None) or (cfg.ffn_dim,) * sets


def _stack_fc1(inputs: Arrays, cfg: Any) -> Arrays:
    """kyutai's per-set `linear_in` (F_c, D), rows [gate; value], -> one (W, F, D) stack, each half zero-padded to
    F / 2 rows (cfg.ffn_dims: widths that differ; without them no padding, a plain stack)."""
    half, out = cfg.ffn_dim // 2, []
    for w in inputs[0]:
        h = w.shape[0] // 2
        pad = np.zeros((half - h, *w.shape[1:]), w.dtype)
        out.append(np.concatenate([w[:h], pad, w[h:], pad]))
    return [[np.stack(out)]]


def _padding_problem(pad: np.ndarray, name: str, c: int, width: int) -> None:
    """Refuses padding that is not zero; zero-byte placeholders (shape-only conversions) pass."""
    if pad.dtype.itemsize and np.any(pad != 0):
        raise ValueError(f"weight set {c}: {name} is nonzero beyond its width {width} (cfg.ffn_dims): not kyutai's")


def _unstack_fc1(inputs: Arrays, cfg: Any) -> Arrays:
    """Inverse of `_stack_fc1`; padding that is not zero is refused (the weights are not a kyutai model's)."""
    (x,) = inputs[0]
    out = []
    for c, (w, f) in enumerate(zip(x, _widths(cfg, len(x)), strict=True)):
        half, h = w.shape[0] // 2, f // 2
        _padding_problem(np.concatenate([w[h:half], w[half + h :]]), "fc1", c, f)
        out.append(np.concatenate([w[:h], w[half : half + h]]))
    return [out]


def _stack_fc2(inputs: Arrays, cfg: Any) -> Arrays:
    """kyutai's per-set `linear_out` (D, F_c / 2) -> one (W, D, F / 2) stack, columns zero-padded."""
    half = cfg.ffn_dim // 2
    return [[np.stack([np.pad(w, ((0, 0), (0, half - w.shape[1]))) for w in inputs[0]])]]


def _unstack_fc2(inputs: Arrays, cfg: Any) -> Arrays:
    (x,) = inputs[0]
    out = []
    for c, (w, f) in enumerate(zip(x, _widths(cfg, len(x)), strict=True)):
        _padding_problem(w[:, f // 2 :], "fc2", c, f)
        out.append(w[:, : f // 2])
    return [out]


TRANSFORMS: dict[str, Transform] = {
    "identity": _each(lambda x, cfg: x),
    "transpose": _each(lambda x, cfg: x.swapaxes(-1, -2)),  # torch (..., out, in) <-> flax (..., in, out)
    "alpha_to_weight": _each(lambda x, cfg: x.reshape(x.shape[-1])),  # kyutai (1, 1, D) -> (D,)
    "weight_to_alpha": _each(lambda x, cfg: x.reshape(1, 1, x.shape[-1])),
    # HF half layout <-> cfg.rope_layout (a no-op unless rope is on and the layout interleaved); q reads cfg.num_heads,
    # k cfg.num_kv_heads.
    "q_half_to_layout": _each(_q_half_to_layout),
    "k_half_to_layout": _each(_k_half_to_layout),
    "q_layout_to_half": _each(_q_layout_to_half),
    "k_layout_to_half": _each(_k_layout_to_half),
    # per-codebook ModuleLists (n arrays, a {c} template) <-> one stacked (n, ...) array; conditions pick the rows.
    "stack": lambda inputs, cfg: [[np.stack(inputs[0])]],
    "unstack": lambda inputs, cfg: [list(inputs[0][0])],
    # a flexible gated MLP's per-set ModuleList <-> its stack, per-set widths that differ zero-padded to ffn_dim
    "stack_fc1": _stack_fc1,
    "unstack_fc1": _unstack_fc1,
    "stack_fc2": _stack_fc2,
    "unstack_fc2": _unstack_fc2,
    "unfuse_qkv": _unfuse_qkv,
    "fuse_qkv": _fuse_qkv,
    "split_steps": _split_steps,
    "join_steps": lambda inputs, cfg: [[np.concatenate(inputs[0])]],  # inverse of split_steps
    # Mimi
    "split_qkv": _split_qkv,
    "join_qkv": _join_qkv,
    "conv_to_flax": _each(lambda x, cfg: x.transpose(2, 1, 0)),  # (out, in/g, K) -> (K, in/g, out)
    "conv_from_flax": _each(lambda x, cfg: x.transpose(2, 1, 0)),
    "convtr_to_flax": _each(lambda x, cfg: x.transpose(2, 0, 1)),  # (in, out/g, K) -> (K, in, out/g)
    "convtr_from_flax": _each(lambda x, cfg: x.transpose(1, 2, 0)),
    "conv1x1_to_linear": _each(lambda x, cfg: x.reshape(x.shape[:2])),  # kyutai (out, in, 1) -> (out, in)
    "linear_to_conv1x1": _each(lambda x, cfg: x.reshape(*x.shape, 1)),
    "drop_initialized": _drop_initialized,
    "add_initialized": _add_initialized,
    "check_initialized": _check_initialized,
}


def register_transform(name: str, transform: Transform, *, replace: bool = False) -> None:
    """Makes `name` available to rules (a new format's or component kind's own moves).

    Raises:
        ValueError: the name is taken (unless `replace`).
    """
    if name in TRANSFORMS and not replace:
        raise ValueError(f"register_transform: {name!r} is already registered")
    TRANSFORMS[name] = transform
