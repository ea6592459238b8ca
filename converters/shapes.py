"""What a state of each component looks like in each format, and the strict check of a state against it.

Keys are relative to the component; a state may carry any prefix in front of them (`layers.3.`, `decoder.model.`), and
may hold several instances under different prefixes (a whole stack of layers). `split_prefixes` recovers the prefixes by
matching each key's longest expected suffix at a "." boundary, so no converter table ever spells a prefix.

Axis names: D dim, Q q_dim (heads x head_dim), KV kv_dim, F ffn_dim, Hd hidden (= F/2), W weight sets
(num_codebooks when flexible, else the axis is absent), L num_codebooks (a standalone flexible linear's stack).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from moshi_spec.config import TransformerConfig

FORMATS = ("kyutai", "hf", "ref", "flax")
COMPONENTS = ("flexible_linear", "rmsnorm", "gating_mlp", "attention", "decoder_layer")

Shape = tuple[int | None, ...]
"""An expected shape; None is a wildcard (a standalone flexible linear's in/out widths are not in the config)."""

DECODER_CHILDREN: dict[str, tuple[tuple[str, str], ...]] = {
    # (sub-prefix, component), in the same order for every format: input norm, post-attention norm, attention, MLP.
    # Tables for decoder_layer are derived by pairing these entries position by position.
    "hf": (
        ("input_layernorm.", "rmsnorm"),
        ("post_attention_layernorm.", "rmsnorm"),
        ("self_attn.", "attention"),
        ("mlp.", "gating_mlp"),
    ),
    "kyutai": (("norm1.", "rmsnorm"), ("norm2.", "rmsnorm"), ("self_attn.", "attention"), ("gating.", "gating_mlp")),
}
DECODER_CHILDREN["ref"] = DECODER_CHILDREN["hf"]
DECODER_CHILDREN["flax"] = DECODER_CHILDREN["hf"]


class ConversionError(ValueError):
    """A state does not have the keys / shapes / dtypes a format expects; the message lists every problem found."""


def _torch_linear(w: tuple[int, ...], out: int, inp: int) -> Shape:
    return (*w, out, inp)


def _flax_linear(w: tuple[int, ...], out: int, inp: int) -> Shape:
    return (*w, inp, out)


def _leaf_shapes(fmt: str, component: str, cfg: TransformerConfig) -> dict[str, Shape]:
    D, Q, KV, F, Hd = cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.ffn_dim, cfg.hidden
    W = cfg.weight_sets
    w = (W,) if cfg.flexible else ()
    proj_dims = {"q": (Q, D), "k": (KV, D), "v": (KV, D), "o": (D, Q)}  # (out, in)

    if fmt in ("hf", "ref", "flax"):
        linear = _flax_linear if fmt == "flax" else _torch_linear
        param = "kernel" if fmt == "flax" else "weight"
        proj = "_proj.linear." if fmt == "hf" else "_proj."
        if component == "flexible_linear":
            return {param: (cfg.num_codebooks, None, None)}
        if component == "rmsnorm":
            return {"weight": (D,)}
        if component == "gating_mlp":
            return {f"fc1.{param}": linear(w, F, D), f"fc2.{param}": linear(w, D, Hd)}
        if component == "attention":
            return {f"{n}{proj}{param}": linear(w, *dims) for n, dims in proj_dims.items()}
    elif fmt == "kyutai":
        if component == "rmsnorm":
            return {"alpha": (1, 1, D)}
        if component == "gating_mlp":
            if not cfg.flexible:
                return {"linear_in.weight": (F, D), "linear_out.weight": (D, Hd)}
            # A flexible kyutai layer holds a ModuleList of ActivationGating, one per codebook.
            shapes: dict[str, Shape] = {}
            for c in range(W):
                shapes |= {f"{c}.linear_in.weight": (F, D), f"{c}.linear_out.weight": (D, Hd)}
            return shapes
        if component == "attention":
            shapes = {}
            for c in range(W):
                shapes |= {f"in_projs.{c}.weight": (Q + 2 * KV, D), f"out_projs.{c}.weight": (D, Q)}
            return shapes
    raise ValueError(f"format {fmt!r} has no component {component!r}")


def expected_shapes(fmt: str, component: str, cfg: TransformerConfig) -> dict[str, Shape]:
    """The keys (relative to the component) and shapes of one `component` in format `fmt` for `cfg`.

    Raises:
        ValueError: unknown format or component, or a component the format does not have (kyutai flexible_linear).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; known: {COMPONENTS}")
    if component != "decoder_layer":
        return _leaf_shapes(fmt, component, cfg)
    shapes: dict[str, Shape] = {}
    for prefix, child in DECODER_CHILDREN[fmt]:
        shapes |= {prefix + key: shape for key, shape in _leaf_shapes(fmt, child, cfg).items()}
    return shapes


def split_prefixes(
    state: Mapping[str, object], expected: Mapping[str, Shape]
) -> tuple[dict[str, dict[str, object]], list[str]]:
    """Groups `state` by prefix: each key is matched to its longest expected relative key at a "." boundary.

    Returns:
        ({prefix: {relative key: value}}, keys matching no expected key). With no key matched, one empty group under
        prefix "" is returned so that every expected key is reported missing.
    """
    rels = sorted(expected, key=len, reverse=True)
    groups: dict[str, dict[str, object]] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        for rel in rels:
            if key == rel or key.endswith("." + rel):
                groups.setdefault(key[: len(key) - len(rel)], {})[rel] = value
                break
        else:
            unmatched.append(key)
    return groups or {"": {}}, unmatched


def _fmt_shape(shape: object) -> str:
    if shape is None:
        return "nothing"
    return "(" + ", ".join("*" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_ok(expected: Shape, got: tuple[int, ...]) -> bool:
    return len(expected) == len(got) and all(e is None or e == g for e, g in zip(expected, got, strict=True))


def check_state(
    state: Mapping[str, object], fmt: str, component: str, cfg: TransformerConfig, *, what: str = "state"
) -> dict[str, dict[str, np.ndarray]]:
    """Checks that `state` holds exactly the keys and shapes of one or more `component`s in format `fmt`.

    Returns:
        The state grouped by prefix, `{prefix: {relative key: array}}`.

    Raises:
        ConversionError: listing, all at once, every missing key (expected shape), unexpected key (its shape), key with
            the wrong shape (expected vs got) and value that is not a numpy array.
    """
    expected = expected_shapes(fmt, component, cfg)
    groups, unmatched = split_prefixes(state, expected)
    problems: list[str] = []
    for prefix, group in groups.items():
        for rel, shape in expected.items():
            key = prefix + rel
            if rel not in group:
                problems.append(f"missing     {key}: expected {_fmt_shape(shape)}, got nothing")
                continue
            value = group[rel]
            if not isinstance(value, np.ndarray):
                problems.append(f"not numpy   {key}: got {type(value).__module__}.{type(value).__qualname__}")
            elif not _shape_ok(shape, value.shape):
                problems.append(f"wrong shape {key}: expected {_fmt_shape(shape)}, got {_fmt_shape(value.shape)}")
    for key in unmatched:
        got = getattr(state[key], "shape", None)
        problems.append(f"unexpected  {key}: expected nothing, got {_fmt_shape(got) if got is not None else '?'}")
    if problems:
        raise ConversionError(
            f"{what}: {fmt} {component} state does not match {fmt} layout for this config "
            f"(prefixes {sorted(groups)}); {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    return groups  # type: ignore[return-value]
