"""Memory plan of an LM: weight bytes and KV cache bytes for a dtype and batch size, from the config alone.

python -m models_flax.memory --preset moshi_7b --dtype bfloat16 --batch 1
"""

from __future__ import annotations

import argparse

from moshi_spec import LMConfig

BYTES = {"float32": 4, "bfloat16": 2}


def plan(cfg: LMConfig, *, dtype: str = "bfloat16", batch: int = 1) -> dict[str, int]:
    """Bytes of the weights and of the streaming caches (temporal ring of `context` steps; depth of dep_q steps)."""
    size = BYTES[dtype]
    t, d = cfg.temporal, cfg.depth
    if t.context is None:
        raise ValueError("memory plan: the temporal transformer needs a context window to size its ring cache")
    temporal_kv = t.num_layers * 2 * batch * t.context * t.kv_dim * size
    depth_kv = d.num_layers * 2 * batch * cfg.dep_q * d.kv_dim * size
    return {
        "parameters": cfg.num_params(),
        "weights": cfg.num_params() * size,
        "temporal_kv_cache": temporal_kv,
        "depth_kv_cache": depth_kv,
        "total": cfg.num_params() * size + temporal_kv + depth_kv,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="moshi_7b")
    parser.add_argument("--dtype", choices=sorted(BYTES), default="bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    result = plan(LMConfig.preset(args.preset), dtype=args.dtype, batch=args.batch)
    print(f"{args.preset} {args.dtype} batch {args.batch}")
    for name, value in result.items():
        text = f"{value:,}" if name == "parameters" else f"{value / 1e9:8.2f} GB  ({value:,} bytes)"
        print(f"  {name:18} {text}")


if __name__ == "__main__":
    main()
