"""kyutai `moshi` (the upstream the released checkpoints come from), built from our configs and run in our inputs.

Nothing is copied: the classes are imported from the installed package. kyutai's layers take no positions and no mask:
outside streaming every row starts at position 0 (a case with other positions is refused, never silently shifted), and
its per-codebook weights follow the step index. The whole LM takes codes (B, 1 + n_q, T) and applies its own delays.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np

from converters.upstream_config import kyutai_ffn_problem, kyutai_norm_problem, to_kyutai_kwargs
from moshi_spec import NORM_EPS, LMConfig, TransformerConfig
from moshi_spec.kyutai import dim_feedforward
from parity.harness.adapters import LAYERS
from parity.harness.adapters.base import (
    Binding,
    Built,
    Inputs,
    Outputs,
    TorchAdapter,
    device_of,
    native_inputs,
    numpy_outputs,
    stack_captured,
    torch_dtype,
)


def layer_support(component: str):
    """Why kyutai cannot build a standalone `component` for cfg (None when it can)."""

    def supports(cfg: TransformerConfig) -> str | None:
        if component == "gating_mlp" and cfg.flexible:
            return "kyutai's per-codebook gating exists only inside a layer"
        if component in ("attention", "decoder_layer") and cfg.head_dim * cfg.num_heads != cfg.dim:
            return f"kyutai ties head_dim to dim / num_heads ({cfg.dim} / {cfg.num_heads}), got head_dim {cfg.head_dim}"
        if component == "decoder_layer" and cfg.norm_eps != NORM_EPS[cfg.norm]:
            return f"kyutai's {cfg.norm} fixes eps at {NORM_EPS[cfg.norm]:g}, got {cfg.norm_eps:g}"
        if component == "decoder_layer" and not cfg.gated and (cfg.flexible or cfg.activation != "gelu"):
            return "kyutai's plain FFN (gating='none') applies exact gelu and has no weight set per step"
        return None

    return supports


def kyutai_dim_feedforward(cfg: TransformerConfig) -> int:
    """The dim_feedforward kyutai derives cfg's gated hidden width from (a plain FFN's: its width)."""
    return dim_feedforward(cfg.dim, cfg.hidden) if cfg.gated else cfg.ffn_dim


def _rope(cfg: TransformerConfig, *, interleave: bool | None = None):
    """kyutai's RotaryEmbedding: inside a layer interleaved, or half-split for its rope_concat (the layout of the
    kyutai weights); standalone in `interleave`'s layout."""
    from moshi.modules import rope

    interleave = not cfg.rope_concat if interleave is None else interleave
    return rope.RotaryEmbedding(interleave=interleave, max_period=cfg.rope_theta)


def _layer_kwargs(cfg: TransformerConfig) -> dict[str, Any]:
    return {
        "num_heads": cfg.num_heads,
        "causal": True,
        "context": cfg.context,
        "rope": _rope(cfg) if cfg.rope else None,
        "kv_repeat": cfg.num_heads // cfg.num_kv_heads,
        "weights_per_step": cfg.num_codebooks if cfg.flexible else 0,
    }


def _build_layer(component: str):
    def build(cfg: TransformerConfig, dtype: str, options: dict, init: bool) -> Any:
        import torch
        from moshi.modules import gating, transformer

        if component == "rmsnorm":
            module = transformer.RMSNorm(cfg.dim, eps=cfg.norm_eps, dtype=torch.float32)
        elif component == "gating_mlp":
            module = gating.make_gating(cfg.activation, cfg.dim, kyutai_dim_feedforward(cfg))
        elif component == "rope":  # pairs (2i, 2i + 1) as kyutai's rope, or (i, i + D/2) as its rope_concat
            module = _rope(cfg, interleave=cfg.rope_layout == "interleaved")
        elif component == "attention":
            module = transformer.StreamingMultiheadAttention(embed_dim=cfg.dim, **_layer_kwargs(cfg))
        else:
            module = transformer.StreamingTransformerLayer(
                d_model=cfg.dim, dim_feedforward=kyutai_dim_feedforward(cfg), norm=cfg.norm,
                gating=cfg.activation if cfg.gated else "none", layer_scale=cfg.layer_scale, **_layer_kwargs(cfg),
            )  # fmt: skip
        return module.to(torch_dtype(dtype)).eval()

    return build


def _offsets(positions: Any, *, zero: bool) -> Any:
    """kyutai positions are an offset per row plus arange(T); anything else is refused (zero: offsets must be 0)."""
    import torch

    offsets = positions[:, 0]
    if not torch.equal(positions, offsets[:, None] + torch.arange(positions.shape[1])):
        raise ValueError("kyutai: positions must be contiguous per row (offset + arange(T))")
    if zero and int(offsets.abs().max()) != 0:
        raise ValueError("kyutai: attention outside streaming starts every row at position 0")
    return offsets


def _run_layer(component: str):
    def run(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        arrays = native_inputs(inputs, built.dtype)
        x, module = arrays["x"], built.module
        if component == "rope":  # x: (B, T, H, D)
            y, _ = module(x, x, _offsets(arrays["positions"], zero=False), time_before_heads=True)
        elif component in ("rmsnorm", "gating_mlp"):
            y = module(x)
        else:
            _offsets(arrays["positions"], zero=True)
            y = module(x, x, x) if component == "attention" else module(x)
        return numpy_outputs({"y": y})

    return run


def lm_kwargs(cfg: LMConfig) -> dict[str, Any]:
    """kyutai `LMModel` keyword arguments for cfg, in the layout of `moshi.models.loaders._lm_kwargs` (written by the
    converters, which also write them next to a converted kyutai checkpoint)."""
    return to_kyutai_kwargs(cfg)


def lm_support(cfg: LMConfig) -> str | None:
    t, d = cfg.temporal, cfg.depth
    if problem := kyutai_norm_problem(cfg) or kyutai_ffn_problem(cfg):
        return problem
    for name, sub in (("temporal", t), ("depth", d)):
        if sub.head_dim * sub.num_heads != sub.dim:
            return f"kyutai LMModel needs head_dim = dim / heads ({name})"
    if d.context is not None:
        return "kyutai LMModel has no depth context (it overrides depformer_context with None)"
    return None


def build_lm(cfg: LMConfig, dtype: str, options: dict, init: bool) -> Any:
    from moshi.models.lm import LMModel

    return LMModel(**lm_kwargs(cfg)).to(torch_dtype(dtype)).eval()


def _stacks(module: Any) -> dict[str, Any]:
    """capture name -> the layers of that transformer (its first layer's input is the stack's input: the embeddings,
    plus the sinusoidal embedding StreamingTransformer.forward adds when it has one)."""
    return {"hidden": module.transformer.layers, "depth_hidden": module.depformer.layers}


def run_lm(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    """LMModel.forward; "hidden" ("depth_hidden") hooks the temporal (depth) transformer's input and every layer's
    output. With extra heads, "extra_logits" (B, heads, T, dim): each of `extra_heads` on out_norm's output (forward
    leaves them out; LMGen.step_with_extra_heads applies them to that same output, then a softmax)."""
    import torch

    module, normed = built.module, []
    with contextlib.ExitStack() as stack:
        seen = {name: stack.enter_context(stack_captured(layers))
                for name, layers in _stacks(module).items() if name in capture}  # fmt: skip
        hook = module.out_norm.register_forward_hook(lambda _m, _i, y: normed.append(y))
        stack.callback(hook.remove)
        out = module(torch.from_numpy(np.asarray(inputs["codes"], np.int64)).to(device_of(module)))
    result = {"text_logits": out.text_logits, "text_mask": out.text_mask, "audio_logits": out.logits,
              "audio_mask": out.mask}  # fmt: skip
    if len(module.extra_heads):
        (x,) = normed
        result["extra_logits"] = torch.stack([head(x) for head in module.extra_heads], dim=1)
    return numpy_outputs(result | {name: torch.stack(hidden) for name, hidden in seen.items()})


def _run_stack_layer(capture_name: str):
    def run(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        """Teacher forcing: layer `inputs["layer"]` of the stack applied to a given input x (B, T, D) at positions
        0..T-1 (the depth stack: T = dep_q steps, each with its own weights)."""
        layer = _stacks(built.module)[capture_name][int(inputs["layer"])]
        return numpy_outputs({"y": layer(native_inputs(inputs, built.dtype)["x"].to(device_of(layer)))})

    return run


class KyutaiAdapter(TorchAdapter):
    name = "kyutai"
    format = "kyutai"
    bindings: ClassVar = {
        **{
            c: Binding(build=_build_layer(c), run=_run_layer(c), supports=layer_support(c), weights=c != "rope")
            for c in LAYERS
            if c != "flexible_linear"  # kyutai has none standalone (per-step ModuleLists inside its layers)
        },
        "lm": Binding(
            build=build_lm,
            run=run_lm,
            entries={"temporal_layer": _run_stack_layer("hidden"), "depth_layer": _run_stack_layer("depth_hidden")},
            supports=lm_support,
            captures=("hidden", "depth_hidden"),
        ),
    }
