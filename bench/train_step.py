"""One fine-tuning step: Flax `Trainer.step` vs the PyTorch step (`TorchTrainer` on kyutai's LMModel), side by side in
one process, on the same weights, the same TrainConfig and the same batches.

    python bench/train_step.py                       # small preset, LoRA rank 128, fp32, CPU (~1.5 min, 2 cores)
    python bench/train_step.py --mode full --steps 3 # full fine-tuning
    python bench/train_step.py --preset tiny --steps 2 --frames 16                       # a smoke run (~30 s)
    python bench/train_step.py --preset tiny --flax-only --param-dtype bfloat16 --remat  # the GPU step's CPU twin
    python bench/train_step.py --device              # torch on CUDA, jax on its default (GPU) device
    python bench/train_step.py --preset moshi_7b --flax-only --device --param-dtype bfloat16 --remat \
        --batch 16 --frames 1250 --steps 2           # the recipe's 7B LoRA step, Flax only (bench/gpu_check.sh)

Both trainers run the recipe's step (moshi_spec/training.py): the loss of each micro-batch, its gradient accumulated
over --microbatches, the fp32 master copy, torch's clipping, AdamW and OneCycleLR. PyTorch: kyutai's LMModel with
kyutai's LoRA (models_ref/training.py); Flax: models_flax.training.step.Trainer, jitted, state donated. Weights come
from one seeded kyutai model through the converters (parity.harness.implementations.build), LoRA factors from
kyutai's adapters through converters/lora.py; with --param-dtype bfloat16 both models are built in bf16 (kyutai's
recipe: bf16 weights and activations, fp32 master copy and optimizer state).

What is timed: one whole optimizer step each, after one untimed warm-up step (Flax's includes the jit compile, printed
apart). The Flax step is blocked on (jax.block_until_ready on the new state and the metrics); the PyTorch step returns
Python floats (its loss and grad norm), which synchronises it (and torch.cuda.synchronize with --device). --order
blocks (default): each trainer runs one more untimed step, then --steps steps back to back, as a training loop runs
them; --order round-robin: one step of each per round, alternating which goes first. Round-robin spreads machine
drift over both, but on this VM a Flax step that follows a torch step pays several seconds of page-fault system time
(full mode: the pages it frees are handed back while torch runs, and it touches ~550k fresh pages per step), which a
training loop never sees; the table prints each step's system time and page faults. Each time is the median (and min).
Tokens per step are the recipe's count (moshi-finetune train.py, `n_batch_tokens`): text_mask.numel() + mask.numel()
= microbatches x B x T x (1 + dep_q), so tokens/s compare with the recipe's published 12k tokens/s (1 x H100, 7B,
LoRA rank 128, B = 16, 100 s = 1250 frames, bf16, gradient checkpointing).

The warm-up step starts both trainers from identical state on the same batch, so its losses must agree (float32:
~1e-7 measured; the run refuses to time a pair whose losses differ by more than 1e-4 relative, 3e-2 in bf16).
With --flax-only the Flax LM is built directly (random weights, no torch) and the peak device memory is read from
jax's `memory_stats()` (accelerators; XLA:CPU reports none) next to the plan of models_flax/memory.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moshi_spec import LMConfig
from moshi_spec.training import LoRAConfig, TrainConfig

RECIPE = {"tokens_per_s": 12_000, "peak_bytes": 39.6e9, "where": "1 x H100, 7B LoRA r128, B=16, 1250 frames, bf16"}
LOSS_RTOL = {"float32": 1e-4, "bfloat16": 3e-2}


def train_config(args: argparse.Namespace) -> TrainConfig:
    # total_steps only shapes the OneCycle schedule (the lr and beta1 values), not the work of a step
    return TrainConfig(
        mode=args.mode,
        lora=LoRAConfig(rank=args.rank),
        total_steps=100,
        num_microbatches=args.microbatches,
        param_dtype=args.param_dtype,
        remat=args.remat,
    )


def random_codes(cfg: LMConfig, args: argparse.Namespace, seed: int) -> np.ndarray:
    """(microbatches, B, 1 + n_q, T) codes: text ids < text_card, audio ids < card."""
    rng = np.random.default_rng(seed)
    shape = (args.microbatches, args.batch, 1 + cfg.n_q, args.frames)
    codes = rng.integers(0, cfg.card, size=shape)
    codes[:, :, 0] = rng.integers(0, cfg.text_card, size=(*shape[:2], shape[3]))
    return codes.astype(np.int64)


def tokens_per_step(cfg: LMConfig, args: argparse.Namespace) -> int:
    return args.microbatches * args.batch * args.frames * (1 + cfg.dep_q)


# ---------------------------------------------------------------------------------------------------------- build


def build_pair(cfg: LMConfig, tcfg: TrainConfig, args: argparse.Namespace):
    """(TorchTrainer, Flax Trainer): kyutai's LMModel and the Flax LM with the same weights (and the same adapters)."""
    import torch

    from converters.lora import kyutai_to_flax
    from models_flax.training.lora import add_lora as flax_add_lora
    from models_flax.training.lora import load_lora
    from models_flax.training.step import Trainer
    from models_ref.training import TorchTrainer
    from models_ref.training import add_lora as torch_add_lora
    from parity.harness.implementations import build

    models = build("lm", cfg, args.param_dtype, impls=("kyutai", "flax"), seed=0)
    kyutai, flax_lm = models.module("kyutai"), models.module("flax")
    if tcfg.mode == "lora":
        torch_add_lora(kyutai, tcfg.lora, generator=torch.Generator().manual_seed(1))
        state = {k: v.float().numpy() for k, v in kyutai.state_dict().items() if ".lora_" in k}
        flax_add_lora(flax_lm, tcfg.lora, rngs=nnx.Rngs(1))
        load_lora(flax_lm, kyutai_to_flax(state, cfg))
    if args.device:
        kyutai = kyutai.to("cuda")
    return TorchTrainer(kyutai, tcfg), Trainer(flax_lm, tcfg)


def build_flax(cfg: LMConfig, tcfg: TrainConfig, args: argparse.Namespace):
    """The Flax Trainer alone on an LM with random weights (no torch): the accelerator measurement."""
    from models_flax.lm import LM
    from models_flax.training.lora import add_lora
    from models_flax.training.step import Trainer

    dtype = jnp.dtype(args.param_dtype)
    model = LM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # per-codebook kernels are initialised N(0, 1): scale them by fan_in^-1/2 so the loss stays finite in bf16
    params = jax.tree.map(lambda x: (x * x.shape[-2] ** -0.5).astype(x.dtype) if x.ndim == 3 else x, params)
    model = nnx.merge(graphdef, params, rest)
    if tcfg.mode == "lora":
        add_lora(model, tcfg.lora, rngs=nnx.Rngs(1))
    return Trainer(model, tcfg)


# ---------------------------------------------------------------------------------------------------------- timing


class FlaxRunner:
    def __init__(self, trainer):
        self.trainer, self.state = trainer, trainer.init()
        jax.block_until_ready(self.state)

    def __call__(self, codes: jax.Array) -> dict[str, float]:
        self.state, metrics = self.trainer.step(self.state, codes)
        jax.block_until_ready((self.state, metrics))
        return {k: float(v) for k, v in metrics.items()}


class TorchRunner:
    def __init__(self, trainer, device: bool):
        self.trainer, self.device = trainer, device

    def __call__(self, codes) -> dict[str, float]:
        import torch

        metrics = self.trainer.step(codes)  # returns Python floats: the step has finished on the host
        if self.device:
            torch.cuda.synchronize()
        return metrics


@dataclass
class Sample:
    """One timed call: wall seconds, this process's CPU seconds (every thread; of them, in the kernel) and minor page
    faults (first touches of freshly mapped memory)."""

    wall: float
    cpu: float
    sys: float
    faults: int


def timed(fn: Callable, *args) -> tuple[Sample, dict[str, float]]:
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn(*args)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Sample(wall, cpu, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt), out


def peak_device_bytes() -> int | None:
    """Peak bytes in use on jax's first device since the process started (None where the backend keeps no stats)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


# ---------------------------------------------------------------------------------------------------------- report


def environment(args: argparse.Namespace) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    import flax
    import jaxlib
    import optax

    print(f"python {platform.python_version()}  numpy {np.__version__}")
    print(f"jax {jax.__version__}  jaxlib {jaxlib.__version__}  flax {flax.__version__}  optax {optax.__version__}")
    print(f"cpu: {cpu}; os.cpu_count {os.cpu_count()}; affinity {len(os.sched_getaffinity(0))} cores")
    print(f"jax backend {jax.default_backend()} {jax.devices()}")
    if not args.flax_only:
        import torch

        where = f"cuda ({torch.cuda.get_device_name()})" if args.device else "cpu"
        print(
            f"torch {torch.__version__} on {where}: intra-op threads {torch.get_num_threads()}, "
            f"interop threads {torch.get_num_interop_threads()}, mkldnn {torch.backends.mkldnn.is_available()}"
        )
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "NO_TORCH_COMPILE", "JAX_PLATFORMS"):
        print(f"  {var}={os.environ.get(var, '')}")
    print(f"load average {open('/proc/loadavg').read().split()[:3]}")


def thread_names() -> str:
    """This process's threads by name: XLA:CPU's intra-op pool shows as tf_XLAEigen (sized by the CPU affinity unless
    XLA_FLAGS says otherwise); torch's OpenMP workers are named like the main thread (python)."""
    names: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            name = f.read().strip()
        names[name] = names.get(name, 0) + 1
    return ", ".join(f"{name} x{count}" for name, count in sorted(names.items()))


def size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def run_pair(cfg: LMConfig, tcfg: TrainConfig, args: argparse.Namespace) -> None:
    import torch

    start = time.perf_counter()
    torch_trainer, flax_trainer = build_pair(cfg, tcfg, args)
    trained = sum(p.numel() for p in torch_trainer.model.parameters() if p.requires_grad)
    print(f"\nbuilt both (shared weights) in {time.perf_counter() - start:.1f} s; trained: {trained:,} parameters")
    flax_step, torch_step = FlaxRunner(flax_trainer), TorchRunner(torch_trainer, args.device)
    batches = [random_codes(cfg, args, seed) for seed in range(args.steps + 2)]
    jax_batches = [jnp.asarray(b, jnp.int32) for b in batches]
    device = "cuda" if args.device else "cpu"
    torch_batches = [torch.from_numpy(b).to(device) for b in batches]

    compile_sample, flax_first = timed(flax_step, jax_batches[0])
    torch_sample, torch_first = timed(torch_step, torch_batches[0])
    compile_s, torch_first_s = compile_sample.wall, torch_sample.wall
    diff = rel(flax_first["loss"], torch_first["loss"])
    print(f"threads after the warm-up: {thread_names()}")
    warm = f"flax {compile_s:.1f} s (jit compile + step), torch {torch_first_s:.1f} s"
    print(f"warm-up step (same state, same batch): {warm}")
    print(f"  first loss: flax {flax_first['loss']!r}  torch {torch_first['loss']!r}  relative difference {diff:.2e}")
    print(f"  grad norm:  flax {flax_first['grad_norm']:.6g}  torch {torch_first['grad_norm']:.6g}  "
          f"relative difference {rel(flax_first['grad_norm'], torch_first['grad_norm']):.2e}")  # fmt: skip
    if not diff <= LOSS_RTOL[args.param_dtype]:
        raise SystemExit(
            f"the two steps disagree (first loss relative difference {diff:.2e} > {LOSS_RTOL[args.param_dtype]:g}): "
            "a benchmark of two different computations measures nothing"
        )

    from lm_forward import CpuMonitor  # bench/lm_forward.py: CPU time other processes took while we timed

    steps = {"flax": (flax_step, jax_batches), "torch": (torch_step, torch_batches)}
    samples: dict[str, list[Sample]] = {"flax": [], "torch": []}
    losses: dict[str, list[float]] = {"flax": [], "torch": []}
    with CpuMonitor() as monitor:
        if args.order == "blocks":  # each trainer's steps back to back, as a training loop runs them
            for name, (fn, data) in steps.items():
                fn(data[1])  # untimed: the first step after the other trainer's pays for its memory (README)
                for i in range(2, args.steps + 2):
                    sample, metrics = timed(fn, data[i])
                    samples[name].append(sample)
                    losses[name].append(metrics["loss"])
        else:
            for i in range(1, args.steps + 1):  # round-robin, alternating which goes first
                order = list(steps.items())
                for name, (fn, data) in order if i % 2 else order[::-1]:
                    sample, metrics = timed(fn, data[i])
                    samples[name].append(sample)
                    losses[name].append(metrics["loss"])

    tokens = tokens_per_step(cfg, args)
    med = {name: statistics.median(x.wall for x in xs) for name, xs in samples.items()}
    low = {name: min(x.wall for x in xs) for name, xs in samples.items()}
    med_cpu = {name: statistics.median(x.cpu for x in xs) for name, xs in samples.items()}
    print(f"\n{args.steps} steps each, {args.order}")
    print(
        f"{'step':8} {'median s':>9} {'min s':>8} {'tokens/s':>10} {'cpu s':>7} {'sys s':>6} {'faults':>8}   per-step s"
    )
    for name in ("torch", "flax"):
        xs = samples[name]
        each = " ".join(f"{x.wall:.3f}" for x in xs)
        sys_s, faults = statistics.median(x.sys for x in xs), statistics.median(x.faults for x in xs)
        row = f"{med[name]:9.3f} {low[name]:8.3f} {tokens / med[name]:10.1f} {med_cpu[name]:7.2f} {sys_s:6.2f}"
        print(f"{name:8} {row} {faults:8.0f}   {each}")
    ratio, ratio_min = med["flax"] / med["torch"], low["flax"] / low["torch"]
    print(f"\nflax time / torch time: {ratio:.3f} (median), {ratio_min:.3f} (min); < 1: Flax faster")
    print(f"flax cpu time / torch cpu time: {med_cpu['flax'] / med_cpu['torch']:.3f} (median process CPU seconds: "
          "meaningful with one thread each, `taskset -c N ... --threads 1`: other load hardly moves it)")  # fmt: skip
    last = rel(losses["flax"][-1], losses["torch"][-1])
    print(f"loss of the last timed step: flax {losses['flax'][-1]:.8f}  torch {losses['torch'][-1]:.8f}  "
          f"relative difference {last:.2e}")  # fmt: skip
    print(f"while timing, {monitor.report()}")


def run_flax_only(cfg: LMConfig, tcfg: TrainConfig, args: argparse.Namespace) -> None:
    from models_flax.memory import train_plan

    start = time.perf_counter()
    trainer = build_flax(cfg, tcfg, args)
    flax_step = FlaxRunner(trainer)
    print(f"\nbuilt the Flax LM + trainer in {time.perf_counter() - start:.1f} s")
    batches = [jnp.asarray(random_codes(cfg, args, seed), jnp.int32) for seed in range(args.steps + 1)]
    compile_sample, first = timed(flax_step, batches[0])
    compile_s = compile_sample.wall
    print(f"warm-up step: {compile_s:.1f} s (jit compile + step); first loss {first['loss']:.6f}")
    print(f"threads after the warm-up: {thread_names()}")
    times = [timed(flax_step, b)[0].wall for b in batches[1:]]
    tokens, med = tokens_per_step(cfg, args), statistics.median(times)
    print(f"flax step: median {med:.3f} s (min {min(times):.3f}) over {args.steps}: {tokens / med:,.0f} tokens/s "
          f"({tokens:,} tokens per step)")  # fmt: skip
    peak = peak_device_bytes()
    plan = train_plan(cfg, mode=tcfg.mode, rank=tcfg.lora.rank, param_dtype=tcfg.param_dtype, fsdp=1, dp=1,
                      batch=args.batch, frames=args.frames, remat=tcfg.remat)  # fmt: skip
    parts = ", ".join(
        f"{name} {size(plan[name])}" for name in ("weights", "master", "adam", "gradients", "activations")
    )
    print(f"memory plan (models_flax/memory.py, one device): {size(plan['total'])} ({parts})")
    if peak is None:
        print(f"peak device memory: not reported by the {jax.default_backend()} backend")
    else:
        print(f"peak device memory (jax memory_stats peak_bytes_in_use): {size(peak)}")
    if cfg == LMConfig.moshi_7b():
        recipe = f"{RECIPE['tokens_per_s']:,} tokens/s, {RECIPE['peak_bytes'] / 1e9:.1f} GB peak"
        print(f"\nrecipe ({RECIPE['where']}): {recipe}")
        print(f"flax / recipe: tokens/s {tokens / med / RECIPE['tokens_per_s']:.2f}x" + (
            "" if peak is None else f", peak memory {peak / RECIPE['peak_bytes']:.2f}x"))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", choices=("tiny", "small", "moshi_7b"))
    p.add_argument("--mode", default="lora", choices=("lora", "full"))
    p.add_argument("--batch", type=int, default=1, help="B of each micro-batch")
    p.add_argument("--frames", type=int, default=128, help="T (12.5 frames per second of audio)")
    p.add_argument("--microbatches", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each (after one warm-up step)")
    p.add_argument("--rank", type=int, default=128, help="LoRA rank (the recipe's 128)")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", action="store_true", help="recompute each layer's activations in the backward pass")
    p.add_argument("--device", action="store_true", help="torch on CUDA, jax on its default accelerator")
    p.add_argument("--flax-only", action="store_true", help="the Flax step alone (no torch), with peak memory")
    p.add_argument(
        "--order", choices=("blocks", "round-robin"), default="blocks", help="how the timed steps interleave"
    )
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch intra-op threads")
    args = p.parse_args()
    if args.steps < 1 or args.batch < 1 or args.frames < 2 or args.microbatches < 1:
        p.error("--steps, --batch and --microbatches must be >= 1 and --frames >= 2")
    os.environ["NO_TORCH_COMPILE"] = "1"  # read when kyutai's moshi is imported; torch.compile would change the timing
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and jax may share the GPU
    if not args.device:
        jax.config.update("jax_platforms", "cpu")
    elif jax.default_backend() == "cpu":
        raise SystemExit("--device: jax found no accelerator (jax.devices() is CPU only)")
    if not args.flax_only:
        import torch

        torch.set_num_threads(args.threads)
        if args.device and not torch.cuda.is_available():
            raise SystemExit("--device: torch sees no CUDA device")
    cfg = LMConfig.preset(args.preset)
    tcfg = train_config(args)
    environment(args)
    print(f"\n{args.preset}: {cfg.num_params() / 1e6:.1f}M params; mode {args.mode}"
          + (f" (rank {args.rank})" if args.mode == "lora" else "")
          + f", param dtype {args.param_dtype}, remat {args.remat}; {args.microbatches} micro-batch(es) of "
          f"B={args.batch} x T={args.frames}: {tokens_per_step(cfg, args):,} tokens per step")  # fmt: skip
    if args.flax_only:
        run_flax_only(cfg, tcfg, args)
    else:
        run_pair(cfg, tcfg, args)


if __name__ == "__main__":
    main()
