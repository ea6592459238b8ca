"""Where a model's weights are: the check the multi-device subprocesses (sharding_check and the checks it runs) make
of every model they place on a mesh."""

from __future__ import annotations

from flax import nnx
from jax.sharding import Mesh

from models_flax import sharding


def check_placement(model: nnx.Module, mesh: Mesh) -> int:
    """Every parameter is placed with its rule's spec, and one with a split axis holds a smaller shard than its
    global shape on each device; returns how many are split."""
    specs = dict(nnx.to_flat_state(sharding.param_specs(model, mesh)))
    split = 0
    for parts, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, value, spec = ".".join(map(str, parts)), variable.get_value(), specs[parts].get_value()
        if getattr(value.sharding, "spec", None) != spec or value.sharding.mesh != mesh:  # one device: no spec
            raise AssertionError(f"{name}: placed with {value.sharding}, rule says {spec} on {mesh}")
        if any(entry is not None for entry in spec):
            if value.addressable_shards[0].data.shape == value.shape:
                raise AssertionError(f"{name}: spec {spec} but the shard has the global shape {value.shape}")
            split += 1
    return split
