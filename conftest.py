"""Root conftest: hypothesis profiles, the jax platform, and the report header.

Hypothesis profiles, selected by hypothesis' own `--hypothesis-profile NAME`, else `$HYPOTHESIS_PROFILE`, else "ci":
    dev      10 examples, random, local example database: quick local iteration.
    ci       15 examples, derandomized (the same examples every run), no database, print_blob.
    nightly  200 examples, random, no database, print_blob: the accelerator job; also runs the tests marked
             `nightly` (skipped by every other profile: longer twins of checks the default suite makes small).
    mutation ci's examples without the shrink phase: the mutation job (parity/harness/mutation) needs a failure, not
             the smallest one, and a planted bug can make shrinking run for minutes.
None has a deadline (a first example pays for jit compilation) and all suppress the too_slow and data_too_large health
checks, for the same reason.

`--full-size-preset {tiny,small,moshi_7b}` sizes the tests marked `full_size` (parity/test_full_size.py): tiny in the
default suite, moshi_7b in the nightly job (`pytest parity -m full_size --full-size-preset moshi_7b`), with the weights
and codes drawn from `--full-size-seed` (default 0), the Flax weights split over `--full-size-fsdp N` devices (default:
one where it holds them, else all of the platform's).

`--platform {cpu,gpu,cuda,rocm,tpu,auto}` (a comma-separated list is allowed, as for JAX_PLATFORMS) picks the jax
backend: it sets `JAX_PLATFORMS` before any test module imports jax, and `jax_platforms` if jax is already imported.
"gpu" means cuda, and cpu is always added after the chosen platforms (the interpreters' callbacks need a CPU device).
Default: `$JAX_PLATFORMS`, else cpu; "auto" (or an empty `$JAX_PLATFORMS`) lets jax choose. xdist workers inherit it.
The nightly job runs `JAX_PLATFORMS=gpu` or `--platform tpu`; nothing here forces CPU behind its back.

XLA runs with `--xla_allow_excess_precision=false` (appended to `$XLA_FLAGS`): a jitted bf16 computation then rounds
to bf16 after every op, as eager jax and eager torch do, instead of keeping fused intermediates in float32. The bf16
bounds between our two implementations were measured op by op (ref vs eager flax); jitted bf16 flax with excess
precision measured mae/rms 1.59e-3 against ref on the decoder layer, past that bound (1.57e-3), while with the flag it
is within it. So the suite can jit bf16 layers (4x cheaper than eager) and still hold them to the measured bound.

On the CPU platform XLA also compiles with `--xla_backend_optimization_level=0` (LLVM without its optimisation
passes): the suite compiles thousands of small programs (~0.25 s each on the 2-core CI machine) and runs each once or
twice, so compile time dominates (test_decoder_layer.py + test_mimi.py: 64.6 s -> 44.8 s). It changes float32 rounding
(no fused multiply-adds: tiny-LM audio logits move by ~1e-5 of their rms, Mimi decode by 9e-8), not semantics. The
policy's measurements were repeated under it on 2026-12-01 (bench/measure_tolerances.py --examples 8, every layer and
the LM; the Mimi measurements, 3 seeds x 4 signals): every component, pair class and dtype stays within its bound with
the margins the policy states (fp32 layers <= 1.0e-6 against 5e-6, LM audio logits 7.8e-6 against 4e-5, Mimi stages
2.2e-6 against 1e-5; bf16 kyutai -> ours audio logits 1.4e-1 against 2e-1, Mimi as before), and the whole suite passes
(288 s against 399-414 s without). An accelerator platform (the nightly job) keeps XLA's defaults.

On CPU it also compiles with `--xla_cpu_use_fusion_emitters=false`: XLA:CPU's loop emitters instead of its newer
MLIR fusion emitters, which cost more compile time than the few runs of each program win back. Measured on the 2-core
CI machine, 2026-12-01, back to back: test_decoder_layer.py 28.7 s -> 22.2 s; the whole suite 355-375 s -> 256-278 s
(worker CPU 680 s -> 508 s; XLA's backend compile was 288 s of the 680, jax's trace and lowering 145 s). Results stay
within every bound with the same margins: bench/measure_tolerances.py --examples 8, paired with and without the flag
(fp32 layers <= 1.5e-6 against 5e-6, LM audio logits 1.07e-5 against 8.7e-6 without (bound 4e-5), Mimi stages 3.4e-6
against 2.6e-6 (bound 1e-5); bf16 kyutai -> ours audio logits 1.39e-1, bound 2e-1), and every bit-exact check of the
suite still holds. A jaxlib that drops the flag stops at startup naming it ("Unknown flag in XLA_FLAGS"): remove it
from CPU_COMPILE_FLAGS then.

Each xdist worker (`-n auto`: one per core) runs torch on one thread: with torch's default (one thread per core) the
workers' torch threads fight each other and XLA for the same cores (measured under load: kyutai LMGen over 60 frames
6-12 s with 2 threads, 0.41-0.45 s with 1; test_streaming.py 145 s -> 45 s). Results are torch's own either way.
"""

from __future__ import annotations

import argparse
import os
import sys

import pytest
from hypothesis import HealthCheck, Phase, settings

from reports import records

pytest_plugins = ["pytester", "reports.plugin"]  # reports.plugin is also in pyproject addopts; loading twice is a no-op

os.environ.setdefault("JAX_ENABLE_X64", "0")  # parity is fp32/bf16; x64 would silently widen the reference
EXACT_BF16_FLAG = "--xla_allow_excess_precision=false"
if EXACT_BF16_FLAG not in os.environ.get("XLA_FLAGS", ""):  # read when jax starts its backend, after this import
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {EXACT_BF16_FLAG}".strip()

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=10, print_blob=True, **_COMMON)
settings.register_profile("ci", max_examples=15, derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("nightly", max_examples=200, database=None, print_blob=True, **_COMMON)
settings.register_profile(
    "mutation", parent=settings.get_profile("ci"), phases=[p for p in Phase if p not in (Phase.shrink, Phase.explain)]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")

PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu")


def _platform(value: str) -> str:
    value = value.strip().lower()
    if value in ("", "auto"):
        return "auto"
    platforms = value.split(",")
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown jax platform(s) {unknown}; use 'auto' or a comma-separated list of {PLATFORMS}"
        )
    # jax 0.11 expands "gpu" to cuda and rocm and fails without a ROCm plugin (seen on an H200): "gpu" means cuda.
    platforms = list(dict.fromkeys("cuda" if p == "gpu" else p for p in platforms))
    # The Pallas and TPU interpreters run their callbacks on a CPU device; the first platform stays the default.
    return ",".join(platforms if "cpu" in platforms else [*platforms, "cpu"])


def pytest_addoption(parser: pytest.Parser) -> None:
    default = os.environ.get("JAX_PLATFORMS")
    try:
        default = "cpu" if default is None else _platform(default)
    except argparse.ArgumentTypeError as e:
        raise pytest.UsageError(f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']!r}: {e}") from None
    parser.addoption(
        "--platform",
        type=_platform,
        default=default,
        metavar="{auto,cpu,gpu,cuda,rocm,tpu}",
        help="jax backend for the run; sets JAX_PLATFORMS (default: $JAX_PLATFORMS, else cpu; auto: jax chooses)",
    )
    parser.addoption(
        "--full-size-preset",
        default="tiny",
        choices=("tiny", "small", "moshi_7b"),
        help="LMConfig preset of the tests marked full_size (parity/test_full_size.py; default tiny: the suite's twin "
        "of the nightly job's moshi_7b)",
    )
    parser.addoption(
        "--full-size-seed",
        type=int,
        default=0,
        help="seed of the full_size tests' weights (s) and codes (s + 1, s + 2) (default 0)",
    )
    parser.addoption(
        "--full-size-fsdp",
        type=int,
        default=None,
        help="devices the full_size tests split the Flax weights over (default: one where it holds them, else all of "
        "the platform's, as a TPU v5e host needs at 7B; 1: one device)",
    )


CPU_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    platform = config.getoption("platform")
    if platform == "auto":
        os.environ.pop("JAX_PLATFORMS", None)
    else:
        os.environ["JAX_PLATFORMS"] = platform
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one process per core already (see the module docstring)
        import torch

        torch.set_num_threads(1)
    flags = os.environ.get("XLA_FLAGS", "")
    if platform.split(",")[0] == "cpu":  # read when the backend starts (below)
        missing = [flag for flag in CPU_COMPILE_FLAGS if flag.split("=")[0] not in flags]
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
    jax = sys.modules.get("jax")
    if jax is None:
        return
    # A conftest or plugin imported jax before this hook: its config read JAX_PLATFORMS then, so set it directly,
    # which works as long as no backend has started.
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise pytest.UsageError(
            f"--platform {platform}: jax backends were initialized (on {jax.default_backend()}) before "
            "pytest_configure; move the jax call that starts them out of import time"
        )
    jax.config.update("jax_platforms", None if platform == "auto" else platform)


# The longest modules first, longest first (worker seconds on the 2-core CI machine, 2026-12-01): `--dist loadfile
# --no-loadscope-reorder` hands whole modules to the workers in collection order, so the short ones, alphabetical
# after these, fill the end and both workers finish together. (xdist's default order, most tests first, sent
# test_readme's 13 tests and 63 s late: one worker ran it alone at the end.)
RUN_FIRST = (
    "test_readme.py",  # 63 s
    "test_pallas.py",  # 54 s
    "test_training.py",  # 40 s
    "test_sharding.py",  # 40 s
    "test_full_size.py",  # 33 s
    "test_streaming.py",  # 31 s
    "test_lm_family.py",  # 30 s
    "test_decoder_layer.py",  # 25 s
    "test_bf16_oracle.py",  # 24 s
    "test_lowering.py",  # 22 s
    "test_attention.py",  # 20 s
    "test_mimi.py",  # 20 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long modules first (RUN_FIRST; every worker sorts its collection the same way, as xdist needs); tests
    marked `nightly` (longer twins of default-suite checks) run under the nightly hypothesis profile only. (Collecting
    the `patch` controls, which clear the worker's compiled programs, last was measured and saved nothing.)"""
    first = {name: rank for rank, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(RUN_FIRST)))  # stable: each module's order is kept
    if records.hypothesis_profile() == "nightly":
        return
    skip = pytest.mark.skip(reason="nightly only (run with --hypothesis-profile nightly)")
    for item in items:
        if item.get_closest_marker("nightly"):
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in records.versions().items() if version)
    return [
        f"moshi-parity: hypothesis profile {records.hypothesis_profile()!r}, platform {config.getoption('platform')!r}"
        f" (JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!r}), JAX_ENABLE_X64={os.environ['JAX_ENABLE_X64']}",
        f"moshi-parity versions: {versions}",
    ]


# kyutai wraps rope, norms and gating in a lazy torch.compile; on CPU that only costs compile time (and recompiles for
# every new theta), so the suite runs kyutai's eager code, which is what the compiled graph computes.
os.environ.setdefault("NO_TORCH_COMPILE", "1")
