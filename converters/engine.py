"""The converter engine: `convert` any component kind between formats along the shortest path of edges, with strict
accounting before, between and after the edges; `convert_shapes` / `validate_shapes`, the same on zero-byte
placeholders (a key/shape table checked and converted without a weight in memory). The input is accounted for in
its own names, legacy ones included (converters/legacy.py), before they are rewritten.

A conversion walks the component block by block (a block is one top-level part of one instance: the LM's embeddings
and heads, then one decoder layer at a time; a decoder layer's norms, attention and MLP), each block's leaves through
every edge of the path before the next block starts, so only one block's intermediates are alive at a time: a 7B
conversion never holds two full copies of the weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from converters import registry
from converters.accounting import account, placeholders
from converters.legacy import expected_in_own_names, normalize
from converters.registry import Leaf

State = dict[str, np.ndarray]
Progress = Callable[[int], object]


def _chain(path: list[str], component: str, cfg: Any) -> list[dict[tuple[str, ...], Leaf]]:
    """The component's leaves in every format of the path, by name; the names must agree between formats."""
    chain = [{leaf.name: leaf for leaf in registry.leaves(fmt, component, cfg)} for fmt in path]
    for fmt, leaves in zip(path[1:], chain[1:], strict=True):
        if list(leaves) != list(chain[0]):
            raise ValueError(f"{component}: parts of {path[0]} {list(chain[0])} and {fmt} {list(leaves)} disagree")
    return chain


def _through(
    part: State, path: list[str], chain: list[dict[tuple[str, ...], Leaf]], name: tuple[str, ...], at: str
) -> State:
    """Leaf `name` of the instance at prefix `at` (its keys relative to the leaf) through every edge of the path, each
    edge's output checked against the next format's shapes."""
    leaf = chain[0][name]
    for (a, b), before, leaves in zip(itertools.pairwise(path), chain[:-1], chain[1:], strict=True):
        here = at + before[name].prefix
        part = registry.EDGES[(a, b)](part, cfg=leaf.cfg, component=leaf.component, at=here)
        prefix = at + leaves[name].prefix
        expected = registry.expected_shapes(b, leaf.component, leaf.cfg)
        account(
            {prefix + key: value for key, value in part.items()},
            {prefix + key: shape for key, shape in expected.items()},
            what=f"output of edge {a}->{b}" + (f" ({prefix}*)" if prefix else ""),
        )
    return part


def convert(
    state: Mapping[str, np.ndarray],
    *,
    src: str,
    dst: str,
    cfg: Any,
    component: str,
    progress: Progress | None = None,
) -> State:
    """Converts a state of `component` from format `src` to format `dst`, bit for bit.

    Args:
        state: flat {key: numpy array}. A `whole` kind (the LM): exactly its keys; other kinds: one or more instances
            under any prefixes (`layers.3.`). Legacy names of `src` (kyutai's fused attention) are accepted.
        src, dst: registered formats; src == dst validates (and normalizes legacy names) without converting.
        cfg: the component's config (TransformerConfig for layers, LMConfig for "lm", any object for a registered kind).
        component: a registered component kind ("lm", "decoder_layer", "attention", ...).
        progress: called with the number of input keys of each block once converted; the calls add up to the
            number of (normalized) input keys.

    Returns:
        A new flat state in dst's layout, with the same instance prefixes and dtypes. Round trips are bit-exact.

    Raises:
        ValueError: unknown format or component, a format without the component, no path between the formats, or an
            end format that cannot hold this component's weights for cfg (`Format.refuses`: an LM with layer norms
            to or from hf).
        ConversionError: the input (in its own names, legacy ones included), or any edge's output, does not account
            for every key with the right shape.
    """
    for fmt in (src, dst):
        registry.expected_shapes(fmt, component, cfg)
        if refused := getattr(registry.get_format(fmt), "refuses", lambda *_: None)(component, cfg):
            raise ValueError(f"convert {src}->{dst} ({component}): {refused}")
    path = registry.find_path(src, dst, component)
    chain = _chain(path, component, cfg)
    task = f"convert {src}->{dst}" if src != dst else f"validate {src}"
    own, clashes, where = expected_in_own_names(state, src, component, cfg)
    account(state, own, extra=clashes, what=f"input of {task}: not a {src} {component} for this config{where}")
    state = normalize(state, src, component, cfg)
    instances = registry.check_state(state, src, component, cfg, what=f"input of {task}")
    blocks: dict[str, list[tuple[str, ...]]] = {}
    for name in chain[0]:  # grouped by top-level part, in part order
        blocks.setdefault(name[0] if name else "", []).append(name)
    out: State = {}
    for at in instances:
        for names in blocks.values():
            size = 0
            for name in names:
                leaf = chain[0][name]
                keys = registry.expected_shapes(src, leaf.component, leaf.cfg)
                part = _through({key: state[at + leaf.prefix + key] for key in keys}, path, chain, name, at)
                out |= {at + chain[-1][name].prefix + key: value for key, value in part.items()}
                size += len(keys)
            if progress:
                progress(size)
    registry.check_state(out, dst, component, cfg, what=f"output of {task}")
    return out


def convert_shapes(
    shapes: Mapping[str, Any], *, src: str, dst: str, cfg: Any, component: str
) -> dict[str, tuple[int, ...]]:
    """`convert` on zero-byte placeholders: the output's keys and shapes, every check done, no weights allocated.

    Raises:
        ConversionError: entries that are not shapes, or anything `convert` refuses.
    """
    state = placeholders(shapes, what=f"{src} {component} shapes")
    out = convert(state, src=src, dst=dst, cfg=cfg, component=component)
    return {key: tuple(value.shape) for key, value in out.items()}


def validate_shapes(shapes: Mapping[str, Any], *, fmt: str, cfg: Any, component: str) -> dict[str, tuple[int, ...]]:
    """Strict accounting of a component from its key -> shape table only (e.g. safetensors headers): no weights.

    Returns:
        The shapes under current names (legacy names normalized).

    Raises:
        ConversionError: every missing, unexpected and misshaped key, listed together.
    """
    return convert_shapes(shapes, src=fmt, dst=fmt, cfg=cfg, component=component)
