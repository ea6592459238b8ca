"""Small Pallas tiles for layer-level parity runs: inputs of a few dozen positions then span several key blocks (and
the decode kernel's cache is split over 3 programs), so block ranges, ragged last blocks and the split combine are
exercised; the backend's default tiles would hold such inputs in one block."""

from __future__ import annotations

import functools

import pytest

import models_flax.attention
from models_flax.kernels.decode import DecodeBlockSizes, decode_attention
from models_flax.kernels.flash_attention import BlockSizes, flash_attention

TILES = BlockSizes(block_q=8, block_k=8)
DECODE_TILES = DecodeBlockSizes(block_k=4, num_splits=3)


def use_small_tiles(monkeypatch: pytest.MonkeyPatch, *, decode: bool = True) -> None:
    """Runs the kernels of "flax[attention=pallas]" on TILES (prefill) and DECODE_TILES (cached chunks of up to
    `MAX_STEPS` queries, which `Attention` gives the decode kernel); decode=False: cached chunks take the prefill
    kernel too."""
    flash = functools.partial(flash_attention, block_sizes=TILES)
    monkeypatch.setattr(models_flax.attention, "flash_attention", flash)
    kernel = functools.partial(decode_attention, block_sizes=DECODE_TILES) if decode else flash
    monkeypatch.setattr(models_flax.attention, "decode_attention", kernel)
