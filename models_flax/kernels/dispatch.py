"""Which kernel source runs: Triton (flash_attention.py, decode.py) or Mosaic (mosaic.py), per platform.

`run_kernel` is the one place the public kernels (`flash_attention`, `decode_attention`) choose: platform "tpu" runs the
Mosaic source jitted with the window traced; otherwise one jitted `jax.lax.platform_dependent` carries both sources, so
that a program exported for TPU from a CPU host holds the Mosaic kernel and one lowered for CUDA the Triton one.
"""

from __future__ import annotations

import functools

import jax

from models_flax.kernels.mosaic import MosaicBlockSizes, mosaic_attention, mosaic_call

KERNEL_PLATFORMS = ("gpu", "tpu")  # kernel sources: Triton (flash_attention.py, decode.py) and Mosaic (mosaic.py)


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
    """
    mosaic_tiles = tiles(block_sizes, MosaicBlockSizes, lambda: MosaicBlockSizes.for_chip(decode=decode))
    if platform == "tpu":
        return mosaic_call(
            args, context, block_sizes=mosaic_tiles, precision=precision, kv_layout=kv_layout, interpret=interpret
        )
    return _by_platform(args, triton, triton_tiles, context, block_sizes, mosaic_tiles, precision, kv_layout,
                        interpret, platform)  # fmt: skip


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
