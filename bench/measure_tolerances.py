"""Measures the differences the parity suite sees between implementation pairs, to justify parity/harness/policy.py.

For each component, pair and dtype it draws N examples from the suite's own strategies and prints the worst
max|diff| / rms(ref) and MAE / rms(ref) it saw, with rtol fixed at the policy's value. Run:

    python bench/measure_tolerances.py --examples 40
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from parity.harness import implementations
from parity.harness.arrays import to_numpy
from parity.harness.checks import SHORT_OFFSET
from parity.harness.strategies import cases, configs

SUITES = {
    "flexible_linear": (configs(flexible=True), ("none", "int", "0d", "1d", "broadcast")),
    "rmsnorm": (configs(), ("none",)),
    "gating_mlp": (configs(), ("none", "int", "0d", "1d")),
    "rope": (configs(rope=True, rope_layout="half"), ("none",)),  # HF rotates half-split pairs
    "attention": (configs(), ("none", "int", "0d", "1d")),
    "decoder_layer": (configs(), ("none", "int", "0d", "1d")),
}
PAIRS = (("hf", "ref"), ("ref", "flax"), ("hf", "flax"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--components", nargs="*", default=list(SUITES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{'component':16} {'pair':12} {'dtype':9} {'max|d|/rms':>11} {'mae/rms':>10} {'max rel':>9}")
    for component in args.components:
        cfgs, modes = SUITES[component]
        for pair in PAIRS:
            for dtype in ("float32", "bfloat16"):
                width = "head" if component == "rope" else "dim"
                strategy = cases(cfgs, dtype=dtype, max_offset=SHORT_OFFSET, modes=modes, width=width)
                worst = np.zeros(3)
                for _ in range(args.examples):
                    case = strategy.example()
                    impls = implementations.build(component, case.cfg, dtype, impls=pair)
                    r = to_numpy(impls(pair[0], case)).astype(np.float64)
                    c = to_numpy(impls(pair[1], case)).astype(np.float64)
                    rms = float(np.sqrt(np.mean(r * r))) or 1.0
                    d = np.abs(c - r)
                    rel = d / np.maximum(np.abs(r), 1e-3 * rms)
                    worst = np.maximum(worst, [d.max() / rms, d.mean() / rms, rel.max()])
                print(
                    f"{component:16} {'->'.join(pair):12} {dtype:9} {worst[0]:11.2e} {worst[1]:10.2e} {worst[2]:9.2e}"
                )


if __name__ == "__main__":
    main()
