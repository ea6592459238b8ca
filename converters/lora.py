"""LoRA adapters between kyutai's layout (`moshi.modules.lora.LoRALinear` on every nn.Linear: `{module}.lora_A.weight`
(r, in), `{module}.lora_B.weight` (out, r)) and ours (models_flax/training/lora.py: `{site}.a` (..., in, r), `{site}.b`
(..., r, out)), both ways, bit for bit.

The map follows the base weights' (converters/kyutai_hf.py, ref_flax.py): factors are transposed; a per-codebook
linear's W modules are stacked on a leading axis; the fused attention projection `in_projs.{c}` keeps its adapter
fused (`qkv_lora`, B's output [q; k; v]), with q's and k's rows of B permuted from kyutai's interleaved rope to our
half layout when the stack has rope in that layout (A, shared by q, k and v, is untouched). A kyutai adapter state
saved by kyutai's recipe (`lora.safetensors`, `save_only_lora`) converts as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from converters.transforms import half_to_interleaved, interleaved_to_half
from moshi_spec import LMConfig, TransformerConfig


class LoRAConversionError(ValueError):
    """Adapter keys missing, unexpected or misshaped; the message lists them."""


@dataclass(frozen=True)
class Site:
    """One adapter: kyutai's modules (one per weight set), our path, whether stacked, the q/k/v stack if fused."""

    kyutai: tuple[str, ...]
    ours: str
    stacked: bool
    qkv: TransformerConfig | None = None


def _stacks(cfg: LMConfig) -> tuple[tuple[TransformerConfig, str, str], ...]:
    """(stack config, kyutai's layer prefix, ours) of the temporal and the depth transformer."""
    return (cfg.temporal, "transformer.layers", "layers"), (cfg.depth, "depformer.layers", "depth.layers")


def sites(cfg: LMConfig) -> list[Site]:
    """Every adapter of the LM (kyutai's LoRA wraps every nn.Linear): the layers' (fused attention input, output,
    gated MLP's linear_in / linear_out or plain MLP's linear1 / linear2, per weight set when flexible), the text head,
    extra heads, the demuxed text embeddings' out1 / out2, the low-rank depth embeddings' projections, the depth input
    projections (cfg.depth_in_count) and heads.

    Raises:
        LoRAConversionError: a depth stack with per-set widths that differ (ffn_dims: our stacked kernels pad the
            narrower sets, an adapter's B would write into the padding); not ported.
    """
    if cfg.depth.ffn_dims is not None:
        raise LoRAConversionError(
            f"LoRA of a depth stack with per-set widths that differ (depformer_dim_feedforward {cfg.depth.ffn_dims}) "
            "is not supported: the stacked fc1 / fc2 pad the narrower sets"
        )
    out = []
    for stack, kprefix, oprefix in _stacks(cfg):
        sets = range(stack.weight_sets) if stack.flexible else range(1)
        for i in range(stack.num_layers):
            k, o = f"{kprefix}.{i}.", f"{oprefix}.{i}."
            gates = [f"{k}gating.{c}." for c in sets] if stack.flexible else [f"{k}gating."]
            mlp = [g + "linear_in" for g in gates], [g + "linear_out" for g in gates]
            if not stack.gated:  # kyutai's plain FFN: linear1 / linear2 on the layer itself (never per weight set)
                mlp = [f"{k}linear1"], [f"{k}linear2"]
            out += [
                Site(
                    tuple(f"{k}self_attn.in_projs.{c}" for c in sets), o + "self_attn.qkv_lora", stack.flexible, stack
                ),
                Site(tuple(f"{k}self_attn.out_projs.{c}" for c in sets), o + "self_attn.o_proj.lora", stack.flexible),
                Site(tuple(mlp[0]), o + "mlp.fc1.lora", stack.flexible),
                Site(tuple(mlp[1]), o + "mlp.fc2.lora", stack.flexible),
            ]
    out.append(Site(("text_linear",), "lm_head.lora", False))
    out += [Site((f"extra_heads.{i}",), f"extra_heads.{i}.lora", False) for i in range(cfg.extra_heads)]
    if cfg.demux_second_text_stream:
        out += [Site((f"{k}.{o}",), f"{ours}.{o}.lora", False) for k, ours in
                (("text_emb", "text_embed_tokens"), ("depformer_text_emb", "depth.text_embed_tokens"))
                for o in ("out1", "out2")]  # fmt: skip
    if cfg.depth_low_rank is not None:
        out += [Site((f"depformer_emb.{i}.low_rank",), f"depth.embed_tokens.{i}.low_rank.lora", False)
                for i in range(cfg.dep_q - 1)]  # fmt: skip
        out.append(Site(("depformer_text_emb.low_rank",), "depth.text_embed_tokens.low_rank.lora", False))
    out += [
        Site(tuple(f"depformer_in.{c}" for c in range(cfg.depth_in_count)), "depth.input_projections.lora", True),
        Site(tuple(f"linears.{c}" for c in range(cfg.dep_q)), "depth.lm_heads.lora", True),
    ]
    return out


def _permute(b: np.ndarray, stack: TransformerConfig, *, to_ours: bool) -> np.ndarray:
    """B (out, r) of a fused [q; k; v] projection with q's and k's rows (per head) moved from kyutai's rope layout
    (interleaved; half-split with its rope_concat) to ours (stack.rope_layout), or back."""
    kyutai = "half" if stack.rope_concat else "interleaved"
    if not stack.rope or stack.rope_layout == kyutai:
        return b
    fn = interleaved_to_half if (kyutai if to_ours else stack.rope_layout) == "interleaved" else half_to_interleaved
    q, kv = stack.q_dim, stack.kv_dim
    return np.concatenate([fn(b[:q], stack.num_heads), fn(b[q : q + kv], stack.num_kv_heads), b[q + kv :]])


def _check(state: Mapping[str, np.ndarray], expected: set[str], fmt: str) -> None:
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise LoRAConversionError(
            f"{fmt} LoRA state: {len(missing)} missing key(s) {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )


def kyutai_to_flax(state: Mapping[str, np.ndarray], cfg: LMConfig) -> dict[str, np.ndarray]:
    """{kyutai `{module}.lora_A/B.weight`} -> {our `{site}.a/b`}.

    Raises:
        LoRAConversionError: missing or unexpected keys, or factors whose shapes disagree (rank, in, out), named.
    """
    table = sites(cfg)
    _check(state, {f"{m}.lora_{f}.weight" for s in table for m in s.kyutai for f in "AB"}, "kyutai")
    out, bad = {}, []
    for site in table:
        a = [np.asarray(state[f"{m}.lora_A.weight"]) for m in site.kyutai]
        b = [np.asarray(state[f"{m}.lora_B.weight"]) for m in site.kyutai]
        if site.qkv is not None:
            b = [_permute(x, site.qkv, to_ours=True) for x in b]
        shapes = {(x.shape, y.shape) for x, y in zip(a, b, strict=True)}
        if len(shapes) != 1 or any(x.shape[0] != y.shape[1] for x, y in zip(a, b, strict=True)):
            bad.append(f"{site.kyutai[0]}: A {a[0].shape}, B {b[0].shape} (rank must agree across A, B and codebooks)")
            continue
        a_t, b_t = [x.T for x in a], [x.T for x in b]
        out[f"{site.ours}.a"] = np.stack(a_t) if site.stacked else a_t[0]
        out[f"{site.ours}.b"] = np.stack(b_t) if site.stacked else b_t[0]
    if bad:
        raise LoRAConversionError("kyutai LoRA state: misshaped factors:\n  " + "\n  ".join(bad))
    return out


def flax_to_kyutai(state: Mapping[str, np.ndarray], cfg: LMConfig) -> dict[str, np.ndarray]:
    """Inverse of `kyutai_to_flax`: a state kyutai's `get_lora_moshi(lora_weights=...)` loads.

    Raises:
        LoRAConversionError: missing or unexpected keys, or a stacked factor without one entry per codebook, named.
    """
    table = sites(cfg)
    _check(state, {f"{s.ours}.{f}" for s in table for f in "ab"}, "flax")
    out, bad = {}, []
    for site in table:
        a, b = np.asarray(state[f"{site.ours}.a"]), np.asarray(state[f"{site.ours}.b"])
        if site.stacked and not (a.ndim == b.ndim == 3 and a.shape[0] == b.shape[0] == len(site.kyutai)):
            bad.append(f"{site.ours}: a {a.shape}, b {b.shape}: expected a leading axis of {len(site.kyutai)}")
            continue
        a_list, b_list = (list(a), list(b)) if site.stacked else ([a], [b])
        for module, x, y in zip(site.kyutai, a_list, b_list, strict=True):
            y = y.T if site.qkv is None else _permute(y.T, site.qkv, to_ours=False)
            out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"] = np.ascontiguousarray(x.T), y
    if bad:
        raise LoRAConversionError("flax LoRA state: misshaped factors:\n  " + "\n  ".join(bad))
    return out
