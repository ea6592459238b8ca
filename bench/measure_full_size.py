"""Measures the full-size checks' differences (parity/test_full_size.py) at a preset, to justify its policy rows
(`policy.sized(component, preset)`).

For each seed (weights, codes and the stream's user codes drawn from it, as the test draws them from
--full-size-seed) and dtype it runs exactly the test's comparisons, kyutai vs Flax: the logits rows, every layer's
drift (propagated and teacher-forced) and the streaming step's logits against kyutai's full forward, and the codec
(the preset's Mimi, float32: every stage and the decoded audio), and prints the worst max|d|/rms, mae/rms, KL and the
lowest top-5 agreement per (component, dtype). Run:

    python bench/measure_full_size.py --preset small --seeds 0 1 2      # CPU, about 3 minutes a seed
    python bench/measure_full_size.py --preset moshi_7b --seeds 0 1     # on an accelerator (bench/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import math
import os
import warnings

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # kyutai's eager code, as the suite runs it (see conftest.py)

from parity.harness import full_size
from parity.harness.compare import judge
from parity.harness.full_size import DTYPES, PAIR, drift_runs, stream_runs
from parity.harness.lm_checks import LOGITS, check_layout, drift_cases
from parity.harness.policy import sized
from parity.harness.streaming_runs import aligned_logits


def _measure(worst: dict, key: tuple[str, str], ref, cand, *, dtype: str, logits: bool) -> None:
    """Folds one comparison's metrics into worst[key] = [max/rms, mae/rms, kl, min top-k agreement]. The tiny rows
    provide the metric definitions (top-k's k); their bounds play no part."""
    _, m, _ = judge(ref, cand, component=key[0], pair=PAIR, expected_dtype=dtype, logits=logits, compute_dtype=key[1])
    w = worst.setdefault(key, [0.0, 0.0, 0.0, 1.0])
    w[0], w[1] = max(w[0], m.max_abs / m.ref_rms), max(w[1], m.mae / m.ref_rms)
    if logits:
        w[2], w[3] = max(w[2], m.kl), min(w[3], m.topk_agreement)


def _measure_mimi(worst: dict, preset: str, seeds: list[int]) -> None:
    for seed in seeds:
        built, encoded, decoded = full_size.mimi_runs(preset, seed)
        for *_, a, b in full_size.stage_cases(built.cfg, encoded, decoded):
            _measure(worst, ("mimi_stage", "float32"), a, b, dtype="float32", logits=False)
        audio = decoded["kyutai"]["audio"], decoded["flax"]["audio"]
        _measure(worst, ("mimi_audio", "float32"), *audio, dtype="float32", logits=False)
        codes = encoded["kyutai"]["codes"], encoded["flax"]["codes"]
        print(f"mimi seed {seed}: codes equal {float((codes[0] == codes[1]).mean()):.4f}", flush=True)
        del built, encoded, decoded
        full_size.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "moshi_7b"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--parts", nargs="+", default=["lm", "mimi"], choices=("lm", "mimi"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    worst: dict[tuple[str, str], list[float]] = {}
    if "mimi" in args.parts:
        _measure_mimi(worst, args.preset, args.seeds)
    for dtype in args.dtypes if "lm" in args.parts else ():
        for seed in args.seeds:
            models, runs = drift_runs(args.preset, dtype, seed)
            for component in LOGITS:
                valid = check_layout(models.cfg, runs["kyutai"], runs["flax"], PAIR, component)
                ref, cand = runs["kyutai"][component][valid], runs["flax"][component][valid]
                _measure(worst, (component, dtype), ref, cand, dtype=dtype, logits=True)
            for component, *_, a, b in drift_cases(models, runs, PAIR):
                _measure(worst, (component, dtype), a, b, dtype=dtype, logits=False)
            _, run, reference = stream_runs(args.preset, dtype, seed)
            for component, (full, step) in aligned_logits(models.cfg, reference, run).items():
                _measure(worst, (component, dtype), full, step, dtype="float32", logits=True)
            del models, runs, run, reference  # the next seed's pair is built only after this one is freed
            full_size.release()
            print(f"{dtype} seed {seed} done", flush=True)
    print(f"\n{'component':28} {'dtype':9} {'max|d|/rms':>11} {'mae/rms':>10} {'kl':>10} {'top-5':>7}")
    for (component, dtype), (mx, mae, kl, topk) in sorted(worst.items()):
        kl_text, topk_text = (f"{kl:10.2e}", f"{topk:7.4f}") if component in LOGITS else (f"{'-':>10}", f"{'-':>7}")
        preset = full_size.MIMI_PRESETS[args.preset] if component.startswith("mimi") else args.preset
        print(f"{sized(component, preset):28} {dtype:9} {mx:11.2e} {mae:10.2e} {kl_text} {topk_text}")
    if any(math.isnan(v) for w in worst.values() for v in w):
        raise SystemExit("a metric is NaN")


if __name__ == "__main__":
    main()
