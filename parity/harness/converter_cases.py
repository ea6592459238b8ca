"""Shared cases of the converter tests: small configs over every rope layout and head shape, random states of exactly
the expected shapes, bit-for-bit state comparison, and the rewrite of kyutai attention names to the legacy fused ones.

Imported by parity/test_converters_tables.py and parity/test_converters_upstream.py; a plain module, not a conftest.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from converters import expected_shapes
from moshi_spec.config import TransformerConfig

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
ROPES = {"norope": (False, "half"), "half": (True, "half"), "interleaved": (True, "interleaved")}
SHAPES = {"mha": {}, "gqa_hd8": {"head_dim_override": 8, "num_kv_heads_override": 2}}  # q_dim 32 != dim 16


def make_cfg(*, flexible: bool = False, rope: str = "interleaved", shape: str = "mha") -> TransformerConfig:
    use_rope, layout = ROPES[rope]
    return TransformerConfig(
        dim=16, num_heads=4, num_layers=1, ffn_dim=32, num_codebooks=3, flexible=flexible, rope=use_rope,
        rope_layout=layout, **SHAPES[shape],
    )  # fmt: skip


CONFIGS = [
    pytest.param(
        make_cfg(flexible=flexible, rope=rope, shape=shape), id=f"{'flex' if flexible else 'plain'}-{rope}-{shape}"
    )
    for flexible in (False, True)
    for rope in ROPES
    for shape in SHAPES
]


def random_state(fmt: str, component: str, cfg: TransformerConfig, dtype: str = "float32", *, prefixes=("",), seed=0):
    """Random arrays of exactly the expected shapes (wildcard dims of a flexible linear become 5 and 7)."""
    rng = np.random.default_rng(seed)
    state = {}
    for prefix in prefixes:
        for key, shape in expected_shapes(fmt, component, cfg).items():
            wild = iter((5, 7))
            dims = [next(wild) if d is None else d for d in shape]
            state[prefix + key] = rng.standard_normal(dims).astype(np.float32).astype(DTYPES[dtype])
    return state


def assert_bit_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        assert np.ascontiguousarray(got[key]).tobytes() == np.ascontiguousarray(want[key]).tobytes(), key


def legacy(state: dict, cfg: TransformerConfig) -> dict:
    """Rewrites current kyutai attention names to the released checkpoints' fused, step-major ones."""
    out = {k: v for k, v in state.items() if ".in_projs." not in "." + k and ".out_projs." not in "." + k}
    for p in {k[: k.index("in_projs.")] for k in state if "in_projs." in k}:
        out[p + "in_proj_weight"] = np.concatenate([state[f"{p}in_projs.{c}.weight"] for c in range(cfg.weight_sets)])
        out[p + "out_proj.weight"] = np.concatenate([state[f"{p}out_projs.{c}.weight"] for c in range(cfg.weight_sets)])
    return out
