"""Measures the differences the parity suite sees between implementation pairs, to justify parity/harness/policy.py.

For each component, pair and dtype it draws N examples from the suite's own strategies (the LM: N weight/code seeds of
the tiny preset, T=20 past its context of 8) and prints the worst max|diff| / rms(ref), MAE / rms(ref) and max relative
diff it saw, then the worst per (component, dtype, pair class): the policy's key. Run:

    python bench/measure_tolerances.py --examples 25
    python bench/measure_tolerances.py --components lm --examples 3
    python bench/measure_tolerances.py --components mimi --examples 3   # seeds of the tiny Mimi, 4 signals each
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections import defaultdict

import numpy as np

from moshi_spec import LMConfig, MimiConfig
from parity.harness.adapters import pair_class
from parity.harness.checks import SHORT_OFFSET
from parity.harness.implementations import build
from parity.harness.lm_checks import CAPTURES
from parity.harness.strategies import ATTENTION_MAGNITUDES, cases, configs, random_codes

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # kyutai's eager code, as the suite runs it (see conftest.py)
LAYER_PAIRS = (("hf", "ref"), ("ref", "flax"), ("hf", "flax"))
ATTENTION = {"magnitudes": ATTENTION_MAGNITUDES}
SUITES = {
    # component: (config strategy, layer_idx modes, pairs, case options)
    "flexible_linear": (configs(flexible=True), ("none", "int", "0d", "1d", "broadcast"), LAYER_PAIRS, {}),
    "rmsnorm": (configs(), ("none",), (*LAYER_PAIRS, ("kyutai", "hf")), {}),
    "gating_mlp": (configs(), ("none", "int", "0d", "1d"), LAYER_PAIRS, {}),
    "gating_mlp_kyutai": (configs(flexible=False, kyutai=True), ("none",), (("kyutai", "hf"),), {"zero_offsets": True}),
    "rope": (configs(rope=True, rope_layout="half"), ("none",), (("hf", "ref"), ("hf", "flax")), {"width": "head"}),
    "rope_interleaved": (
        configs(rope=True, rope_layout="interleaved"),
        ("none",),
        (("kyutai", "ref"), ("kyutai", "flax"), ("ref", "flax")),
        {"width": "head"},
    ),
    # a standalone attention layer draws the suite's ATTENTION_MAGNITUDES (at rms 30 its scores reach ~1e3: softmax
    # conditioning moves every pair, ours-ours too, by up to 6e-5 x rms; strategies.layers says why)
    "attention": (configs(), ("none", "int", "0d", "1d"), (*LAYER_PAIRS, ("ref", "flax[cached]")), ATTENTION),
    "attention_kyutai": (configs(kyutai=True), ("none",), (("kyutai", "hf"),), {"zero_offsets": True, **ATTENTION}),
    "decoder_layer": (configs(), ("none", "int", "0d", "1d"), (*LAYER_PAIRS, ("ref", "flax[cached]")), {}),
    "decoder_layer_kyutai": (configs(kyutai=True), ("none",), (("kyutai", "hf"),), {"zero_offsets": True}),
}
LM_PAIRS = (("kyutai", "ref"), ("ref", "flax"), ("kyutai", "flax"), ("kyutai", "flax[attention=pallas]"))
MIMI_IMPLS = ("kyutai", "hf", "ref", "flax")
MIMI_PAIRS = tuple((a, b) for i, a in enumerate(MIMI_IMPLS) for b in MIMI_IMPLS[i + 1 :])


def _errors(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    rms = float(np.sqrt(np.mean(r * r))) or 1.0
    d = np.abs(c - r)
    return np.array([d.max() / rms, d.mean() / rms, (d / np.maximum(np.abs(r), 1e-3 * rms)).max()])


def measure_layers(component: str, examples: int, worst: dict) -> None:
    cfgs, modes, pairs, options = SUITES[component]
    name = component.removesuffix("_kyutai").removesuffix("_interleaved")  # variants of a suite: other draws
    for pair in pairs:
        for dtype in ("float32", "bfloat16"):
            strategy = cases(cfgs, dtype=dtype, max_offset=SHORT_OFFSET, modes=modes, **options)
            for _ in range(examples):
                case = strategy.example()
                models = build(name, case.cfg, dtype, impls=pair)
                ref, cand = (models.run(impl, case.inputs())["y"] for impl in pair)
                key = (name, "->".join(pair), dtype)
                worst[key] = np.maximum(worst.get(key, 0), _errors(ref, cand))


def measure_lm(examples: int, worst: dict) -> None:
    cfg = LMConfig.tiny()
    impls = tuple(dict.fromkeys(i for pair in LM_PAIRS for i in pair))
    for dtype in ("float32", "bfloat16"):
        for seed in range(examples):
            models = build("lm", cfg, dtype, impls=impls, seed=seed)
            codes = random_codes(cfg, 2, 20, seed=seed + 1, zero_fraction=0.1)
            runs = {i: models.run(i, {"codes": codes}, capture=CAPTURES) for i in impls}
            for pair in LM_PAIRS:
                ref, cand = runs[pair[0]], runs[pair[1]]
                parts = {
                    "lm_hidden": (ref["hidden"], cand["hidden"]),
                    "lm_depth_hidden": (ref["depth_hidden"], cand["depth_hidden"]),
                    "text_logits": (ref["text_logits"][ref["text_mask"]], cand["text_logits"][ref["text_mask"]]),
                    "audio_logits": (ref["audio_logits"][ref["audio_mask"]], cand["audio_logits"][ref["audio_mask"]]),
                }
                for component, (a, b) in parts.items():
                    key = (component, "->".join(pair), dtype)
                    worst[key] = np.maximum(worst.get(key, 0), _errors(a, b))


def measure_mimi(examples: int, worst: dict) -> None:
    """The tiny Mimi (test_mimi's: 8 frames, batch 2), seeds 0..examples-1, every signal: each encode stage of every
    pair that can encode (kyutai cannot in bf16 on CPU: torch.cdist), each decode stage and the audio of every pair
    decoding one set of codes (kyutai's, in bf16 ref's)."""
    from parity.harness import mimi, mimi_hf  # noqa: F401  (they bind the component to every implementation)
    from parity.harness.strategies import SIGNALS, audio

    cfg = MimiConfig.tiny()
    encode_names, decode_names = cfg.stage_names()
    for dtype in ("float32", "bfloat16"):
        encoders = MIMI_IMPLS if dtype == "float32" else MIMI_IMPLS[1:]
        for seed in range(examples):
            models = build("mimi", cfg, dtype, impls=MIMI_IMPLS, seed=seed)
            for signal in SIGNALS:
                x = audio(signal, cfg, frames=8, batch=2, seed=seed)
                enc = {i: models.run(i, {"audio": x, "num_codebooks": cfg.num_codebooks}, capture=("stages",))
                       for i in encoders}  # fmt: skip
                codes = {"codes": enc[encoders[0]]["codes"]}
                dec = {i: models.run(i, codes, entry="decode", capture=("stages",)) for i in MIMI_IMPLS}
                for pair in MIMI_PAIRS:
                    parts = [(n, "mimi_stage", dec) for n in decode_names] + [("audio", "mimi_audio", dec)]
                    if all(i in enc for i in pair):
                        parts += [(n, "mimi_stage", enc) for n in encode_names]
                    for name, component, runs in parts:
                        a, b = (np.asarray(runs[i][name], np.float32) for i in pair)
                        key = (component, "->".join(pair), dtype)
                        worst[key] = np.maximum(worst.get(key, 0), _errors(a, b))


MODELS = {"lm": measure_lm, "mimi": measure_mimi}  # whole models: measured by seed, not drawn from SUITES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--components", nargs="*", default=[*SUITES, *MODELS])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    worst: dict[tuple[str, str, str], np.ndarray] = {}
    for component in args.components:
        if component in MODELS:
            MODELS[component](args.examples, worst)
        else:
            measure_layers(component, args.examples, worst)
    print(f"{'component':16} {'pair':28} {'dtype':9} {'max|d|/rms':>11} {'mae/rms':>10} {'max rel':>9}")
    by_class: dict[tuple[str, str, str], np.ndarray] = defaultdict(lambda: np.zeros(3))
    for (component, pair, dtype), w in sorted(worst.items()):
        print(f"{component:16} {pair:28} {dtype:9} {w[0]:11.2e} {w[1]:10.2e} {w[2]:9.2e}")
        key = (component, dtype, pair_class(*pair.split("->")))
        by_class[key] = np.maximum(by_class[key], w)
    print(f"\n{'component':16} {'dtype':9} {'pair class':18} {'max|d|/rms':>11} {'mae/rms':>10} {'max rel':>9}")
    for (component, dtype, klass), w in sorted(by_class.items()):
        print(f"{component:16} {dtype:9} {klass:18} {w[0]:11.2e} {w[1]:10.2e} {w[2]:9.2e}")


if __name__ == "__main__":
    main()
