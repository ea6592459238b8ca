"""HF `transformers` Moshi (`modeling_moshi`), built from our configs and run on our inputs.

Nothing is copied: the classes are imported from the installed package. HF's layers take an additive 4-D mask and
position ids; the mask is built here with the same visibility rule as ours (causal, context window) so that what runs
inside is HF's own arithmetic. layer_idx is passed as an integer tensor (HF rejects Python ints despite its docstring).

The LM: HF's forward applies no delay pattern (its generate does), so the delayed, teacher-forced inputs are built
here exactly as kyutai's LMModel.forward builds them; HF has no zero token (-1), so such codes are refused. HF's depth
decoder builds its causal mask only when given an attention_mask; without one (MoshiForConditionalGeneration.forward's
default) codebooks attend to later codebooks. The default here passes an all-ones mask; the option
"hf[depth_mask=default]" reproduces HF's own default (an expected divergence of the suite).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from converters.formats import hf_depth_problem, hf_head_problem
from converters.upstream_config import to_hf_config
from moshi_spec import LMConfig, TransformerConfig
from parity.harness.adapters import LAYERS
from parity.harness.adapters.base import (
    Binding,
    Built,
    Inputs,
    Outputs,
    State,
    TorchAdapter,
    flexible_linear_shape,
    native_inputs,
    numpy_outputs,
    torch_dtype,
)

CODEC_PREFIX = "audio_encoder."
"""MoshiForConditionalGeneration's Mimi codec: not part of the LM; its own random weights stay in place."""


def hf_config(cfg: TransformerConfig) -> Any:
    """An HF MoshiConfig carrying the layer fields of cfg (vocabularies are irrelevant to single layers)."""
    from transformers.models.moshi.configuration_moshi import MoshiConfig

    hf = MoshiConfig(
        hidden_size=cfg.dim, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, num_hidden_layers=cfg.num_layers, ffn_dim=cfg.ffn_dim, hidden_act=cfg.activation,
        rms_norm_eps=cfg.norm_eps, num_codebooks=cfg.num_codebooks,
        sliding_window=cfg.context or 2**31 - 1,  # HF requires an int; our calls pass the mask explicitly
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)}, vocab_size=32,
        audio_vocab_size=32,
    )  # fmt: skip
    hf._attn_implementation = "eager"
    return hf


def _build_layer(component: str):
    def build(cfg: TransformerConfig, dtype: str, options: dict, init: bool) -> Any:
        from transformers.models.moshi import modeling_moshi as hf

        config = hf_config(cfg)
        flexible = {"use_flexible_linear": cfg.flexible}
        if component == "flexible_linear":
            layers, fan_in, fan_out = flexible_linear_shape(cfg)
            module = hf.MoshiFlexibleLinear(fan_in, fan_out, layers)
        elif component == "rmsnorm":
            module = hf.MoshiRMSNorm(cfg.dim, eps=cfg.norm_eps)
        elif component == "gating_mlp":
            module = hf.MoshiGatingMLP(config, **flexible)
        elif component == "rope":
            module = hf.MoshiRotaryEmbedding(config)
        elif component == "attention":
            module = hf.MoshiAttention(config, layer_idx=0, use_rope=cfg.rope, **flexible)
        else:
            module = hf.MoshiDecoderLayer(config, layer_idx=0, use_rope=cfg.rope, **flexible)
        return module.to(torch_dtype(dtype)).eval()

    return build


def additive_mask(positions: Any, context: int | None, dtype: Any) -> Any:
    """The (B, 1, T, T) additive mask HF's eager attention takes, built with the same visibility rule as ours."""
    import torch

    delta = positions[:, :, None] - positions[:, None, :]
    visible = delta >= 0
    if context is not None:
        visible &= delta < context
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def _run_layer(component: str):
    def run(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        import torch
        from transformers.models.moshi import modeling_moshi as hf

        cfg, module = built.cfg, built.module
        arrays = native_inputs(inputs, built.dtype)
        x, positions, idx = arrays["x"], arrays.get("positions"), arrays.get("layer_idx")
        idx = None if idx is None else torch.as_tensor(idx)
        if component == "flexible_linear":
            y = module(x, idx)
        elif component == "rmsnorm":
            y = module(x)
        elif component == "gating_mlp":
            y = module(x, idx) if cfg.flexible else module(x)
        elif component == "rope":  # x: (B, T, H, D) queries; HF works on (B, H, T, D)
            cos, sin = module(x, positions)
            q = x.transpose(1, 2)
            y = hf.apply_rotary_pos_emb(q, q, cos, sin)[0].transpose(1, 2)
        else:
            mask = additive_mask(positions, cfg.context, x.dtype)
            y = module(x, attention_mask=mask, position_ids=positions, codebook_idx=idx)
            y = y[0] if component == "attention" else y
        return numpy_outputs({"y": y})

    return run


def lm_config(cfg: LMConfig) -> Any:
    """An HF MoshiConfig for the LM of cfg (the converters' config.json of it); its Mimi codec is a minimal one (only
    the LM is ever run)."""
    from transformers import MoshiConfig

    mimi = {"num_hidden_layers": 1, "num_filters": 8, "num_quantizers": cfg.n_q}
    hf = MoshiConfig.from_dict(to_hf_config(cfg, audio_encoder=mimi))
    hf._attn_implementation = "eager"
    hf.depth_decoder_config._attn_implementation = "eager"
    return hf


def norm_support(cfg: TransformerConfig) -> str | None:
    """Why HF cannot build cfg's norms (None when it can): its only norm is MoshiRMSNorm, in float32 (rms_norm_f32)."""
    if cfg.norm != "rms_norm_f32":
        return f"HF's Moshi norm is MoshiRMSNorm computed in float32 (rms_norm_f32), the config asks for {cfg.norm!r}"
    return None


def ffn_support(cfg: TransformerConfig) -> str | None:
    """Why HF cannot build cfg's feed-forward block (None when it can): only the gated MLP, no layer scale."""
    if not cfg.gated:
        return "HF's Moshi has only the gated MLP (MoshiGatingMLP), the config asks for a plain one (gating='none')"
    if cfg.layer_scale is not None:
        return f"HF's Moshi has no layer scale (layer_scale={cfg.layer_scale!r})"
    return None


def lm_support(cfg: LMConfig) -> str | None:
    if cfg.n_q != 2 * cfg.dep_q:
        return f"HF Moshi has n_q = 2 * num_codebooks, got n_q {cfg.n_q}, dep_q {cfg.dep_q}"
    if cfg.depformer_norm is not None:
        return f"HF's depth decoder has no output norm (depformer_norm={cfg.depformer_norm!r})"
    if cfg.norm_emb:
        return "HF's Moshi embeddings have no norm (norm_emb=True)"
    if problem := hf_head_problem(cfg) or hf_depth_problem(cfg):  # kyutai's head and depth options
        return problem
    return next(filter(None, (f(s) for f in (norm_support, ffn_support) for s in (cfg.temporal, cfg.depth))), None)


def build_lm(cfg: LMConfig, dtype: str, options: dict, init: bool) -> Any:
    from transformers.models.moshi.modeling_moshi import MoshiForConditionalGeneration

    return MoshiForConditionalGeneration(lm_config(cfg)).to(torch_dtype(dtype)).eval()


def delayed_layout(cfg: LMConfig, codes: Any) -> tuple[Any, Any]:
    """kyutai LMModel.forward's teacher-forced layout of codes (B, 1 + n_q, T): (inputs, targets), both (B, 1 + n_q,
    T): the delayed codes after the initial tokens, and the same one step later.

    Raises:
        ValueError: a zero token (-1) in codes (HF Moshi has none).
    """
    import torch

    from models_ref.delays import delay

    if bool((codes < 0).any()):
        raise ValueError("HF Moshi has no zero token (-1); pass codes without it")
    initial = torch.tensor([cfg.initial_text_token] + [cfg.initial_audio_token] * cfg.n_q)
    delayed = torch.cat([initial.view(1, -1, 1).expand(len(codes), -1, 1), delay(codes, cfg.delays, initial)], dim=2)
    return delayed[:, :, :-1], delayed[:, :, 1:]


def run_lm(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    """HF's temporal decoder and depth decoder on kyutai's delayed, teacher-forced layout of the codes."""
    import torch

    from models_ref.delays import undelay

    cfg, model = built.cfg, built.module
    codes = torch.from_numpy(np.asarray(inputs["codes"], np.int64))
    batch, _, length = codes.shape
    inputs_, targets = delayed_layout(cfg, codes)
    embeds = sum(model.embed_tokens[k](inputs_[:, 1 + k]) for k in range(cfg.n_q))
    embeds = embeds + model.decoder.model.embed_tokens(inputs_[:, 0])
    out = model.decoder(inputs_embeds=embeds, output_hidden_states="hidden" in capture)
    hf_default = built.options.get("depth_mask") == "default"
    depth = model.depth_decoder(
        input_ids=targets[:, : cfg.dep_q].permute(0, 2, 1).reshape(batch * length, cfg.dep_q),
        last_hidden_state=out.last_hidden_state.reshape(batch * length, 1, -1),
        attention_mask=None if hf_default else torch.ones(batch * length, cfg.dep_q, dtype=torch.long),
    )
    audio = depth.logits.view(batch, length, cfg.dep_q, -1).permute(0, 2, 1, 3)
    audio_logits, audio_mask = undelay(audio, cfg.delays[1 : 1 + cfg.dep_q])
    text_logits, text_mask = undelay(out.logits[:, None], cfg.delays[:1])
    result = {"text_logits": text_logits, "text_mask": text_mask, "audio_logits": audio_logits,
              "audio_mask": audio_mask}  # fmt: skip
    if "hidden" in capture:
        result["hidden"] = torch.stack(list(out.hidden_states))
    return numpy_outputs(result)


class HFAdapter(TorchAdapter):
    name = "hf"
    format = "hf"
    bindings: ClassVar = {
        **{c: Binding(build=_build_layer(c), run=_run_layer(c), weights=c != "rope") for c in LAYERS},
        "rmsnorm": Binding(build=_build_layer("rmsnorm"), run=_run_layer("rmsnorm"), supports=norm_support),
        "decoder_layer": Binding(
            build=_build_layer("decoder_layer"),
            run=_run_layer("decoder_layer"),
            supports=lambda cfg: norm_support(cfg) or ffn_support(cfg),
        ),
        "lm": Binding(
            build=build_lm, run=run_lm, supports=lm_support, captures=("hidden",), options={"depth_mask": ("default",)}
        ),
    }

    def state(self, built: Built) -> State:
        """The LM's weights without the Mimi codec (converters know Moshi's LM only)."""
        return {k: v for k, v in super().state(built).items() if not k.startswith(CODEC_PREFIX)}

    def load(self, built: Built, state: State) -> None:
        """Loads the LM's weights; the codec keeps its own random weights (it is never run)."""
        codec = {k: v for k, v in super().state(built).items() if k.startswith(CODEC_PREFIX)}
        super().load(built, {**codec, **state})
