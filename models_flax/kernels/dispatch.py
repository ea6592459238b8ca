"""Which kernel source runs: Triton (flash_attention.py, decode.py) or Mosaic (mosaic.py), per platform.

`run_kernel` is the one place the public kernels (`flash_attention`, `decode_attention`) choose: platform "tpu" runs the
Mosaic source jitted with the window traced; otherwise one jitted `jax.lax.platform_dependent` carries both sources, so
that a program exported for TPU from a CPU host holds the Mosaic kernel and one lowered for CUDA the Triton one.

On a mesh (a `jax.set_mesh` / `jax.sharding.use_abstract_mesh` context with the data axes of models_flax.sharding),
the kernel runs inside a `jax.shard_map` over the batch: XLA cannot partition a Pallas call ("Mosaic kernels cannot be
automatically partitioned"), and attention needs nothing across rows, so each device attends its own rows. The batch
must divide by the data axes' size (a ValueError names both); heads and everything else stay whole on each device.

A cache's `HeadSplit` (what `Streamer(mesh=)` gives its caches: a stream's batch is one or two rows, its caches are
split by kv heads) takes precedence: the kernel runs in a shard_map over that mesh with the queries, keys, values and
output split by heads over its axis (every device whole where the axis is None) and the positions whole. Query head h
reads kv head h // (H / Hkv), so the contiguous head blocks of one device hold exactly the kv heads its queries read.
"""

from __future__ import annotations

import functools
import math

import jax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from models_flax.cache import HeadSplit
from models_flax.kernels.mosaic import MosaicBlockSizes, mosaic_attention, mosaic_call
from models_flax.sharding import AXES  # the mesh axes the batch is split over (sharding.DATA_SPEC)

KERNEL_PLATFORMS = ("gpu", "tpu")  # kernel sources: Triton (flash_attention.py, decode.py) and Mosaic (mosaic.py)
KV_LAYOUTS = ("BSHD", "BHSD")  # keys/values (B, S, Hkv, D), or (B, Hkv, S, D) as models_flax.cache.KVCache holds them


def kv_shape(x, kv_layout: str) -> tuple[int, ...]:
    """The (B, S, Hkv, D) shape of a key/value array laid out as `kv_layout` ("BSHD", or "BHSD" as KVCache holds)."""
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    shape = tuple(x.shape)
    return shape if kv_layout == "BSHD" or len(shape) != 4 else (shape[0], shape[2], shape[1], shape[3])


def run_kernel(
    args: tuple,
    triton,
    triton_tiles: type,
    *,
    context: int | None,
    block_sizes,
    precision: jax.lax.Precision | None,
    kv_layout: str,
    interpret: bool | None,
    platform: str | None,
    decode: bool,
    split: HeadSplit | None = None,
) -> jax.Array:
    """Runs the kernel source that `platform` and `interpret` pick on args (q, k, v, q_positions, k_positions).

    Args:
        triton: the Triton-source kernel, `triton(*args, context=, block_sizes=, interpret=, precision=, kv_layout=)`.
        triton_tiles: its tile class (`BlockSizes`, `DecodeBlockSizes`); `for_backend(backend)` gives the defaults.
        block_sizes: a `triton_tiles` or a `MosaicBlockSizes`: the tiles of that source (the other keeps its defaults).
        platform: "tpu": the Mosaic source, jitted with the window traced (`mosaic.mosaic_call`); "gpu": the Triton
            source; None: the platform the program is lowered for, through `jax.lax.platform_dependent` (TPU: Mosaic,
            CUDA/ROCm: Triton compiled, else Triton interpreted), so that a program exported for TPU from a CPU host
            carries the Mosaic kernel.
        interpret: True: interpret (the Triton source in the Pallas interpreter, the Mosaic source in TPU interpret
            mode); False: compile; None: interpret on CPU.
        decode: whether this is the decode call (the Mosaic source's default tiles differ).
        split: the keys' and values' `HeadSplit`: the kernel runs per device on its heads (`per_head_shard`); None:
            per device on its rows in a mesh context (`per_batch_shard`), else as is.

    Raises:
        ValueError: on a mesh, a batch the data axes do not divide, or heads the split's axis does not divide.
    """
    mosaic_tiles = tiles(block_sizes, MosaicBlockSizes, lambda: MosaicBlockSizes.for_chip(decode=decode))

    def kernel(*args):
        if platform == "tpu":
            return mosaic_call(
                args, context, block_sizes=mosaic_tiles, precision=precision, kv_layout=kv_layout, interpret=interpret
            )
        return _by_platform(args, triton, triton_tiles, context, block_sizes, mosaic_tiles, precision, kv_layout,
                            interpret, platform)  # fmt: skip

    return per_batch_shard(kernel)(*args) if split is None else per_head_shard(kernel, split, kv_layout)(*args)


def per_head_shard(kernel, split: HeadSplit, kv_layout: str):
    """`kernel` (q (B, T, H, D), k, v in `kv_layout`, q and k positions) inside a `jax.shard_map` over `split.mesh`
    that gives each device its block of query heads and the block of kv heads they read (all of them where
    `split.axis` is None), and concatenates the outputs' heads."""
    heads = P(None, None, split.axis)
    kv = P(None, split.axis) if kv_layout == "BHSD" else heads

    def sharded(q, k, v, q_positions, k_positions):
        devices = 1 if split.axis is None else split.mesh.shape[split.axis]
        kv_heads = kv_shape(k, kv_layout)[2]
        if q.shape[2] % devices or kv_heads % devices:
            raise ValueError(
                f"Pallas attention split by heads over mesh axis {split.axis!r} ({devices} devices): {q.shape[2]} "
                f"query and {kv_heads} kv heads do not both divide"
            )
        return jax.shard_map(kernel, mesh=split.mesh, in_specs=(heads, kv, kv, P(), P()), out_specs=heads,
                             check_vma=False)(q, k, v, q_positions, k_positions)  # fmt: skip

    return sharded


def per_batch_shard(kernel):
    """`kernel` (batch-leading arrays in, one batch-leading array out) as is without a mesh context, else inside a
    `jax.shard_map` that gives each device its rows of every argument (the batch split over the context mesh's data
    axes) and concatenates the outputs' rows."""
    mesh = jax.sharding.get_abstract_mesh()
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))  # inside a shard_map its axes are Manual: as is
    axes = tuple(axis for axis in AXES if axis in types and types[axis] != AxisType.Manual)
    if not axes:
        return kernel

    def sharded(*args):
        devices = math.prod(mesh.shape[axis] for axis in axes)
        if args[0].shape[0] % devices:
            raise ValueError(
                f"Pallas attention on mesh {dict(mesh.shape)}: batch {args[0].shape[0]} is not divisible by the data "
                f"axes {axes} ({devices} devices); the kernels attend each device's rows (shard_map over the batch)"
            )
        return jax.shard_map(kernel, in_specs=P(axes), out_specs=P(axes), check_vma=False)(*args)

    return sharded


@functools.partial(jax.jit, static_argnums=tuple(range(1, 10)))
def _by_platform(args, triton, triton_tiles, context, block_sizes, mosaic_tiles, precision, kv_layout, interpret,
                 platform):  # fmt: skip
    def triton_source(interpret: bool, backend: str):
        block = tiles(block_sizes, triton_tiles, lambda: triton_tiles.for_backend(backend))
        kw = dict(context=context, block_sizes=block, interpret=interpret, precision=precision, kv_layout=kv_layout)
        return functools.partial(triton, **kw)

    backend = jax.default_backend()
    if platform == "gpu" or interpret:
        return triton_source(backend == "cpu" if interpret is None else interpret, backend)(*args)
    mosaic = functools.partial(
        mosaic_attention, context=context, block_sizes=mosaic_tiles, precision=precision, kv_layout=kv_layout,
        interpret=False,
    )  # fmt: skip
    return jax.lax.platform_dependent(
        *args,
        tpu=mosaic,
        cuda=triton_source(False, "gpu"),
        rocm=triton_source(False, "gpu"),
        default=triton_source(interpret is None, "cpu"),
    )


def tiles(block_sizes, kind: type, default):
    """`block_sizes` when it is a `kind`, else `default()`; a tile of the other kernel source is passed over (one
    call may name the tiles of one source and leave the others to their defaults)."""
    return block_sizes if isinstance(block_sizes, kind) else default()
