"""Measures every bf16 implementation's error against a float32 oracle of the same weights and inputs
(parity/harness/oracle.py), and the ratio of each port's error to the best upstream's, to justify
`parity.harness.policy.BF16_ORACLE`.

For each case (a component at a length below and past its context window) and seed it prints rel_rms (and KL for
logits) of kyutai, hf, ref, flax, flax[attention=pallas], the "bf16(oracle)" floor (the oracle itself rounded to
bf16: no bf16 output can do better on average), and each port's ratio to the best upstream. The summary gives, per
(case, output, port), the worst ratio over seeds. Run:

    python bench/measure_bf16_oracle.py --seeds 6
    python bench/measure_bf16_oracle.py --seeds 3 --cases lm_short lm_long
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # kyutai's eager code, as the suite runs it (see conftest.py)

from parity.harness import adapters
from parity.harness.oracle import CASES, PORTS, ROUNDING, measure, oracle_run


def _kl(e) -> str:
    return "" if e.kl is None else f" kl {e.kl:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    worst: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for name in args.cases:
        case = CASES[name]
        for seed in range(args.seeds):
            run = oracle_run(case.component, case.cfg, impls=case.impls, seed=seed)
            _, outputs = measure(run, case, seed)
            for key, per_impl in outputs.items():
                floor = per_impl.pop(ROUNDING)
                upstream = {i: e for i, e in per_impl.items() if adapters.kind(i) == "upstream"}
                best = min(e.rel_rms for e in upstream.values())
                cells = [f"{impl} {e.rel_rms:.2e}{_kl(e)}" for impl, e in per_impl.items()]
                ratios = []
                for impl, e in per_impl.items():
                    if impl in PORTS:
                        ratios.append(f"{impl} {e.rel_rms / best:.3f}")
                        worst[(name, key, impl)].append(e.rel_rms / best)
                        if e.kl is not None:
                            best_kl = min(u.kl for u in upstream.values() if u.kl is not None)
                            worst[(name, key, impl + " sqrt(KL)")].append((e.kl / best_kl) ** 0.5)
                head = f"{name:14s} seed {seed} {key:14s} bf16(oracle) {floor.rel_rms:.2e}{_kl(floor)}"
                print(f"{head} | {' | '.join(cells)}")
                print(f"{'':14s}        {'':14s} ratio to best upstream: {', '.join(ratios)}")
    print("\nworst ratio port/best upstream over seeds (rel_rms; for logits also sqrt(KL)):")
    for (name, key, impl), values in sorted(worst.items()):
        print(f"  {name:14s} {key:14s} {impl:30s} max {max(values):.3f}  mean {np.mean(values):.3f}")


if __name__ == "__main__":
    main()
