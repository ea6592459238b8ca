"""Released checkpoints' old names (kyutai's fused `in_proj_weight` / `out_proj.weight`): checked in the names a state
uses, then rewritten into current ones.

A format's `legacy` rows are two-way: forward they rewrite old keys into current ones (`normalize`), backward they turn
the current keys' expected shapes into the old keys' (`expected_in_own_names`). So a state is accounted for in its own
names, before anything is rewritten: a misshaped `self_attn.in_proj_weight` is reported as that key with the shape it
should have, never as the made-up `in_projs.0..3.weight` it would have been split into.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from converters import registry
from converters.accounting import ConversionError, Shape, placeholders, split_prefixes
from converters.rules import Rule, apply_rules

State = dict[str, np.ndarray]
OldName = tuple[str, Shape, tuple[str, ...]]
"""(old key, its shape, the current keys it stands for), relative to the component."""


def old_names(fmt: str, component: str, cfg: Any) -> list[OldName]:
    """Every old name of a `fmt` component's keys, each old spelling on its own (kyutai has two for `in_projs`)."""
    legacy = registry.get_format(fmt).legacy
    found: list[OldName] = []
    for leaf in registry.leaves(fmt, component, cfg) if legacy else ():
        pairs = legacy.get(leaf.component, ())
        current = placeholders(registry.expected_shapes(fmt, leaf.component, leaf.cfg), what=f"{fmt} {leaf.component}")
        for pair in pairs:
            back = apply_rules(current, (pair.backward(),), leaf.cfg, where=f"old {fmt} names")
            for old, sources in back.origin.items():
                shape = tuple(back.out[old].shape)
                found.append((leaf.prefix + old, shape, tuple(leaf.prefix + key for key in sources)))
    return found


def expected_in_own_names(
    keys: Collection[str], fmt: str, component: str, cfg: Any
) -> tuple[dict[str, Shape], list[str], str]:
    """The keys and shapes a `fmt` state of `component` must have, in the names the state uses.

    Each weight is expected under its current name, or under the old name the state holds it by. A state that uses old
    names anywhere is expected to use them for its missing weights too (a released checkpoint lacks `out_proj.weight`,
    not `out_projs.0.weight`).

    Returns:
        ({key: shape} over every instance, weights the state holds under two names, and " (instances under [...])"
        for a kind whose states hold instances under any prefixes, "" for a whole one).
    """
    expected = registry.expected_shapes(fmt, component, cfg)
    names = old_names(fmt, component, cfg)
    present = set(keys)
    where = ""
    prefixes = [""]
    if not registry.get_component(component).whole:
        rel = expected | {old: shape for old, shape, _ in names}
        prefixes = sorted(split_prefixes(dict.fromkeys(present), rel))
        where = f" (instances under {prefixes})"
    uses_old = any(p + old in present for p in prefixes for old, _, _ in names)
    table: dict[str, Shape] = {}
    clashes: list[str] = []
    for p in prefixes:
        group = {p + key: shape for key, shape in expected.items()}
        taken: dict[str, str] = {}  # current key -> the old key the state holds it by
        for old, shape, sources in names:
            full, current = p + old, [p + key for key in sources]
            if full not in present:
                continue
            group[full] = shape  # a clash below is reported once, not again as an unexpected key
            if also := sorted({key for key in current if key in present}):
                clashes.append(f"both legacy and current names for the same weights: {full} and {', '.join(also)}")
            elif also := sorted({taken[key] for key in current if key in taken}):
                clashes.append(f"two legacy names for the same weights: {full} and {', '.join(also)}")
            else:
                for key in current:
                    del group[key]
                    taken[key] = full
        for old, shape, sources in names if uses_old else ():
            current = [p + key for key in sources]
            if all(key in group and key not in present for key in current):
                for key in current:
                    del group[key]
                group[p + old] = shape
        table |= group
    return table, clashes, where


def normalize(state: Mapping[str, np.ndarray], fmt: str, component: str, cfg: Any) -> State:
    """Rewrites a `fmt` state's legacy keys into current ones (the format's `legacy` rows forward, each leaf with its
    own config: the LM's temporal and depth layers split their fused weights into different numbers of codebooks).

    Keys no rule claims pass through unchanged.

    Raises:
        ConversionError: a legacy key and the current key it becomes are both present (listed together).
    """
    legacy = registry.get_format(fmt).legacy
    # A whole state's keys are exact; otherwise {p} takes any instance prefix.
    lead = "" if registry.get_component(component).whole else "{p}"
    by_cfg: dict[int, tuple[Any, list[Rule]]] = {}
    for leaf in registry.leaves(fmt, component, cfg) if legacy else ():
        for pair in legacy.get(leaf.component, ()):
            by_cfg.setdefault(id(leaf.cfg), (leaf.cfg, []))[1].append(pair.forward().under(lead + leaf.prefix))
    out = dict(state)
    for leaf_cfg, rules in by_cfg.values():
        applied = apply_rules(out, tuple(rules), leaf_cfg, where=f"normalizing legacy {fmt} names")
        clashes = [f"{applied.origin[key]} and {key}" for key in applied.unmatched if key in applied.out]
        if clashes:
            raise ConversionError(
                f"{fmt} state holds both legacy and current names for the same weights ({len(clashes)}): "
                + "; ".join(clashes)
            )
        out = applied.out | {key: out[key] for key in applied.unmatched}
    return out
