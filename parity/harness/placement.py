"""Where a model's weights are: the check the multi-device subprocesses (sharding_check and the checks it runs) make
of every model, and of every optimizer state, they place on a mesh."""

from __future__ import annotations

from collections.abc import Mapping

import jax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from models_flax import sharding


def flat(tree: nnx.State) -> dict:
    """A state's values keyed by dotted path ("temporal.layers.0.attention.q_proj.kernel")."""
    return {".".join(map(str, parts)): v.get_value() for parts, v in nnx.to_flat_state(tree)}


def rule_specs(model: nnx.Module | nnx.State, mesh: Mesh | Mapping[str, int]) -> dict[str, PartitionSpec]:
    """Each parameter's spec by the sharding rules (on a mesh, or on axis sizes {"dp": 1, "fsdp": 2}), keyed by its
    dotted path."""
    return flat(sharding.param_specs(model, mesh))


def check_leaves(
    leaves: Mapping[str, jax.Array], specs: Mapping[str, PartitionSpec], mesh: Mesh, what: str = ""
) -> int:
    """Every leaf is placed on `mesh` with the spec its name has in `specs`, and one with a split axis holds a smaller
    shard than its global shape on each device; returns how many are split. Raises AssertionError naming the leaf."""
    split = 0
    for name, value in leaves.items():
        spec, where = specs[name], f"{what} {name}".strip()
        if getattr(value.sharding, "spec", None) != spec or value.sharding.mesh != mesh:  # one device: no spec
            raise AssertionError(f"{where}: placed with {value.sharding}, rule says {spec} on {mesh}")
        if any(entry is not None for entry in spec):
            if value.addressable_shards[0].data.shape == value.shape:
                raise AssertionError(f"{where}: spec {spec} but the shard has the global shape {value.shape}")
            split += 1
    return split


def check_placement(model: nnx.Module, mesh: Mesh) -> int:
    """Every parameter of `model` is placed by its rule (`check_leaves`); returns how many are split."""
    return check_leaves(flat(nnx.state(model, nnx.Param)), rule_specs(model, mesh), mesh)
