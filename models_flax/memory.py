"""Memory plan of an LM from its config alone: inference (`plan`: weights and KV caches) and fine-tuning (`train_plan`:
weights, fp32 master copy, Adam moments, gradients, an activation estimate, per device on a ('dp', 'fsdp') mesh).

python -m models_flax.memory --preset moshi_7b --dtype bfloat16 --batch 1
python -m models_flax.memory --train                      # 7B, full and LoRA r128, bf16, per device at fsdp 8/16/32
python -m models_flax.memory --train --fsdp 1 --batch 16 --mode lora     # the recipe's one-GPU run
"""

from __future__ import annotations

import argparse
import functools
import math
import re
from collections.abc import Sequence
from typing import Any

from moshi_spec import LMConfig, TransformerConfig

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


TRAIN_PARTS = ("weights", "master", "adam", "gradients", "gathered_layer", "activations")


@functools.lru_cache(maxsize=4)
def abstract_train_lm(cfg: LMConfig, *, mode: str, rank: int, param_dtype: str, ft_embed: bool = False) -> tuple:
    """(the LM built abstractly in param_dtype, with adapters for mode "lora" (`add_lora` inside `nnx.eval_shape`),
    its trained Param state, its frozen Param state), split by the Trainer's own rule (`training.step.trainable`).
    Cached: callers must not modify them."""
    import jax.numpy as jnp
    from flax import nnx

    from models_flax.lm import LM
    from models_flax.training.lora import add_lora
    from models_flax.training.step import trainable
    from moshi_spec.training import LoRAConfig, TrainConfig

    tcfg = TrainConfig(mode=mode, lora=LoRAConfig(rank=rank, ft_embed=ft_embed), param_dtype=param_dtype)
    dtype = jnp.dtype(param_dtype)

    def make() -> LM:
        model = LM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
        return add_lora(model, tcfg.lora, rngs=nnx.Rngs(1)) if mode == "lora" else model

    model = nnx.eval_shape(make)
    _, trained, frozen, _ = nnx.split(model, trainable(tcfg, model), nnx.Param, ...)
    return model, trained, frozen


def _unit(path: str) -> str:
    """The layer a parameter belongs to (what FSDP gathers at once): `[depth.]layers.N`, else its top-level module."""
    match = re.match(r"((depth\.)?layers\.\d+)\.", path)
    return (
        match.group(1) if match else ".".join(path.split(".")[:2] if path.startswith("depth.") else path.split(".")[:1])
    )


def _layer_activations(c: TransformerConfig, *, rows: int, length: int, size: int, rank: int) -> tuple[int, int]:
    """(input bytes, internals bytes) of one decoder layer over `rows` sequences of `length` positions (see
    `train_plan`)."""
    tokens = rows * length
    per_token = 3 * c.dim + 2 * c.q_dim + 2 * c.kv_dim + c.ffn_dim + c.hidden + (4 * rank)
    attention = rows * c.num_heads * length * length * (4 + size) + rows * length * length
    return tokens * c.dim * size, tokens * per_token * size + attention


def activation_bytes(
    cfg: LMConfig, *, batch: int, frames: int, param_dtype: str, rank: int = 0, remat: bool = True
) -> dict[str, int]:
    """The activation estimate of `train_plan` for `batch` sequences of `frames` frames on one device, by part."""
    s = BYTES[param_dtype]
    t, d, k = cfg.temporal, cfg.depth, cfg.dep_q
    t_in, t_int = _layer_activations(t, rows=batch, length=frames, size=s, rank=rank)
    d_in, d_int = _layer_activations(d, rows=batch * frames, length=k, size=s, rank=rank)
    if remat:
        layers = t.num_layers * t_in + d.num_layers * d_in + max(t_int, d_int)
    else:
        layers = t.num_layers * (t_in + t_int) + d.num_layers * (d_in + d_int)
    inputs = 2 * batch * frames * t.dim * s + 2 * batch * frames * k * d.dim * s
    heads = batch * frames * (cfg.text_out + k * cfg.card) * (s + 8)
    return {"layers": layers, "inputs": inputs, "heads": heads, "total": layers + inputs + heads}


def train_plan(
    cfg: LMConfig,
    *,
    mode: str = "lora",
    rank: int = 128,
    param_dtype: str = "bfloat16",
    fsdp: int = 1,
    dp: int = 1,
    batch: int = 1,
    frames: int = 1250,
    remat: bool = True,
    ft_embed: bool = False,
    rules: Sequence[Any] | None = None,
) -> dict[str, int]:
    """Bytes per device of one fine-tuning step (models_flax.training.step.Trainer) on a (dp, fsdp) mesh.

    Args:
        cfg: the LM. mode: "lora" (adapters of `rank` on every linear; with ft_embed the embeddings train too) or
            "full". param_dtype: the dtype of the weights and of the computation ("bfloat16": the recipe's).
        fsdp, dp: the mesh. Parameters are split by the rules of models_flax/sharding.py (`describe` on the abstract
            LM with its adapters, so the split is the real one): 'fsdp' splits, 'dp' replicates.
        batch: the global micro-batch (sequences per micro-batch over all devices); the data spec splits it over
            dp x fsdp, so it must be a multiple of dp * fsdp. frames: T. remat: activation checkpointing per layer.
        rules: a sharding rule table other than models_flax.sharding.RULES (for tests).

    Returns {name: bytes on one device} and counts:
        parameters, trained_parameters: global counts (frozen + trained; trained only).
        weights: every parameter in param_dtype (frozen and trained), as split by the rules.
        master: the fp32 copy of the trained parameters; adam: AdamW's two fp32 moments of them; gradients: their
            fp32 gradient (the step accumulates micro-batches in fp32); all split like the parameters they belong to.
        gathered_layer (fsdp > 1): what gathering the largest layer's weights (`[depth.]layers.N`, or a head or
            embedding table) adds over the device's own shard, assuming XLA gathers one layer at a time.
        activations: an estimate, below. total: the sum of the byte entries.

    Activation estimate, for the b = batch / (dp * fsdp) sequences of one device and one micro-batch (micro-batches
    run one after the other), s = the bytes of param_dtype, r = rank (0 in mode "full"):
        a decoder layer over N = rows x length tokens (temporal: b rows of T frames; depth: b*T rows of dep_q steps)
        keeps its input, N*D*s, and internals: N*s*(3D + 2*q_dim + 2*kv_dim + ffn_dim + hidden + 4r) (the normed
        input, q/k/v, the attention output, the residual, the normed residual, the MLP's first linear and its gated
        product, the four LoRA down-projections; rope and norms assumed fused by XLA) plus the attention's
        probabilities rows*H*length^2 (fp32 softmax and its cast to s: the XLA path materialises every query-key pair,
        the window and causality are a mask, rows*length^2 bytes more);
        with remat every layer's input is kept and one layer's internals (the largest) are alive at a time (its
        recomputation in the backward pass); without, every layer's internals stay alive;
        inputs: the summed embeddings and final norm of the temporal stack and the depth stack's embeddings and
        projections, 2*b*T*D*s + 2*b*T*dep_q*Dd*s;
        heads: the logits in s, their fp32 log-softmax kept by the loss and the fp32 gradient the backward pass
        starts from, b*T*(text_out + dep_q*card)*(s + 8) (text_out: text_card, or kyutai's text_card_out).
    What it leaves out: the backward pass's transient gradients of the internals, XLA's temporary buffers and
    fragmentation, the all-gathered and reduce-scattered gradient buffers beyond one layer, and the codes. It is a
    planning figure: the device check (bench/gpu_check.sh) prints it next to the peak that jax measures.

    Raises:
        ValueError: an unknown mode or dtype, a batch that dp * fsdp does not divide, or a mesh the rules cannot
            split the parameters on (naming them).
    """
    from models_flax import sharding

    if mode not in ("lora", "full"):
        raise ValueError(f"train plan: mode must be 'lora' or 'full', got {mode!r}")
    if param_dtype not in BYTES:
        raise ValueError(f"train plan: param_dtype must be one of {sorted(BYTES)}, got {param_dtype!r}")
    devices = dp * fsdp
    if batch < 1 or frames < 1 or batch % devices:
        raise ValueError(
            f"train plan: batch {batch} must be a positive multiple of dp * fsdp = {devices} (the data spec splits "
            f"it over every device), frames {frames} >= 1"
        )
    _, trained, frozen = abstract_train_lm(cfg, mode=mode, rank=rank, param_dtype=param_dtype, ft_embed=ft_embed)
    mesh = {"dp": dp, "fsdp": fsdp}
    kw = {} if rules is None else {"rules": rules}
    trained_p = sharding.describe(trained, mesh, **kw)
    frozen_p = sharding.describe(frozen, mesh, **kw)
    size = BYTES[param_dtype]
    count = sum(math.prod(p.shape) for p in trained_p)
    trained_local = sum(p.bytes_per_device for p in trained_p) // size  # elements of the trained params per device
    units: dict[str, int] = {}
    for p in (*trained_p, *frozen_p):
        units[_unit(p.path)] = units.get(_unit(p.path), 0) + p.bytes - p.bytes_per_device
    acts = activation_bytes(
        cfg, batch=batch // devices, frames=frames, param_dtype=param_dtype, rank=rank if mode == "lora" else 0,
        remat=remat,
    )  # fmt: skip
    out = {
        "parameters": count + sum(math.prod(p.shape) for p in frozen_p),
        "trained_parameters": count,
        "weights": sum(p.bytes_per_device for p in (*trained_p, *frozen_p)),
        "master": 4 * trained_local,
        "adam": 2 * 4 * trained_local,
        "gradients": 4 * trained_local,
        "gathered_layer": max(units.values()) if fsdp > 1 else 0,
        "activations": acts["total"],
    }
    out["total"] = sum(out[name] for name in TRAIN_PARTS)
    return out


def print_train_table(
    cfg: LMConfig, *, modes: Sequence[str], fsdps: Sequence[int], dp: int, rank: int, param_dtype: str,
    batch_per_device: int, frames: int, remat: bool,
) -> None:  # fmt: skip
    """The `train_plan` of each (mode, fsdp) side by side, GB (1e9 bytes) per device."""
    columns, plans = [], []
    for mode in modes:
        for fsdp in fsdps:
            columns.append(f"{mode}{f' r{rank}' if mode == 'lora' else ''} fsdp={fsdp}")
            plans.append(train_plan(cfg, mode=mode, rank=rank, param_dtype=param_dtype, fsdp=fsdp, dp=dp,
                                    batch=batch_per_device * dp * fsdp, frames=frames, remat=remat))  # fmt: skip
    width = max(16, *(len(c) + 2 for c in columns))
    print(f"{'GB per device':16}" + "".join(f"{c:>{width}}" for c in columns))
    for name in ("trained_parameters", *TRAIN_PARTS, "total"):
        if name == "trained_parameters":
            cells = [f"{p[name] / 1e6:,.1f}M" for p in plans]
        else:
            cells = [f"{p[name] / 1e9:.3f}" for p in plans]
        print(f"{name:16}" + "".join(f"{c:>{width}}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="moshi_7b")
    parser.add_argument("--dtype", choices=sorted(BYTES), default="bfloat16", help="weights (and compute) dtype")
    parser.add_argument("--batch", type=int, default=1, help="inference: batch; --train: sequences per device")
    parser.add_argument("--train", action="store_true", help="the fine-tuning plan (train_plan) instead")
    parser.add_argument("--mode", choices=("lora", "full", "both"), default="both", help="--train: what trains")
    parser.add_argument("--rank", type=int, default=128, help="--train: LoRA rank")
    parser.add_argument("--fsdp", type=int, nargs="+", default=[8, 16, 32], help="--train: fsdp sizes")
    parser.add_argument("--dp", type=int, default=1, help="--train: data-parallel replicas")
    parser.add_argument("--frames", type=int, default=1250, help="--train: T (the recipe's 100 s = 1250)")
    parser.add_argument("--no-remat", action="store_true", help="--train: without activation checkpointing")
    args = parser.parse_args(argv)
    cfg = LMConfig.preset(args.preset)
    if args.train:
        modes = ("full", "lora") if args.mode == "both" else (args.mode,)
        remat = not args.no_remat
        print(f"{args.preset} fine-tuning, {args.dtype} weights, per device: dp={args.dp}, {args.batch} sequence(s) "
              f"of {args.frames} frames per device and micro-batch, remat {remat}")  # fmt: skip
        print_train_table(cfg, modes=modes, fsdps=args.fsdp, dp=args.dp, rank=args.rank, param_dtype=args.dtype,
                          batch_per_device=args.batch, frames=args.frames, remat=remat)  # fmt: skip
        return
    result = plan(cfg, dtype=args.dtype, batch=args.batch)
    print(f"{args.preset} {args.dtype} batch {args.batch}")
    for name, value in result.items():
        text = f"{value:,}" if name == "parameters" else f"{value / 1e9:8.2f} GB  ({value:,} bytes)"
        print(f"  {name:18} {text}")


if __name__ == "__main__":
    main()
