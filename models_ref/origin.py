"""The upstream origins: HF `transformers` Moshi modules and kyutai `moshi` modules built from a moshi_spec config.

Nothing upstream is copied: the classes are imported from the installed packages. Each builder returns a module in the
requested dtype; `call_hf` / `call_kyutai` run it with our canonical inputs (x, positions, layer_idx) and translate them
to the upstream's own calling convention (HF: additive 4-D mask + position_ids; kyutai: offsets, no mask argument).
"""

from __future__ import annotations

import torch
from torch import nn

from moshi_spec import LMConfig, TransformerConfig
from moshi_spec import kyutai as kyutai_sizes

COMPONENTS = ("flexible_linear", "rmsnorm", "gating_mlp", "rope", "attention", "decoder_layer")


def flexible_linear_shape(cfg: TransformerConfig) -> tuple[int, int, int]:
    """(num_layers, in, out) of the standalone flexible linear component: the depth model's per-codebook D -> ffn."""
    return cfg.num_codebooks, cfg.dim, cfg.ffn_dim


def hf_config(cfg: TransformerConfig):
    """An HF MoshiConfig carrying the layer fields of cfg (vocabularies are irrelevant to single layers)."""
    from transformers.models.moshi.configuration_moshi import MoshiConfig

    hf = MoshiConfig(
        hidden_size=cfg.dim,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        num_hidden_layers=cfg.num_layers,
        ffn_dim=cfg.ffn_dim,
        hidden_act=cfg.activation,
        rms_norm_eps=cfg.norm_eps,
        num_codebooks=cfg.num_codebooks,
        sliding_window=cfg.context or 2**31 - 1,  # HF requires an int; our calls pass the mask explicitly
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        vocab_size=32,
        audio_vocab_size=32,
    )
    hf._attn_implementation = "eager"
    return hf


def build_hf(component: str, cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers.models.moshi import modeling_moshi as hf

    config = hf_config(cfg)
    if component == "flexible_linear":
        layers, fan_in, fan_out = flexible_linear_shape(cfg)
        module: nn.Module = hf.MoshiFlexibleLinear(fan_in, fan_out, layers)
    elif component == "rmsnorm":
        module = hf.MoshiRMSNorm(cfg.dim, eps=cfg.norm_eps)
    elif component == "gating_mlp":
        module = hf.MoshiGatingMLP(config, use_flexible_linear=cfg.flexible)
    elif component == "rope":
        module = hf.MoshiRotaryEmbedding(config)
    elif component == "attention":
        module = hf.MoshiAttention(config, layer_idx=0, use_flexible_linear=cfg.flexible, use_rope=cfg.rope)
    elif component == "decoder_layer":
        module = hf.MoshiDecoderLayer(config, layer_idx=0, use_flexible_linear=cfg.flexible, use_rope=cfg.rope)
    else:
        raise ValueError(f"build_hf: unknown component {component!r}; known: {COMPONENTS}")
    return module.to(dtype).eval()


def kyutai_dim_feedforward(cfg: TransformerConfig) -> int:
    """The kyutai dim_feedforward whose gating hidden width equals cfg.hidden (kyutai derives hidden from it)."""
    return kyutai_sizes.dim_feedforward(cfg.dim, cfg.hidden)


def kyutai_supports(component: str, cfg: TransformerConfig) -> str | None:
    """None if kyutai has this component for cfg, else the reason it does not."""
    if component in ("flexible_linear",):
        return "kyutai has no standalone flexible linear (it uses per-step ModuleLists inside attention and gating)"
    if component == "gating_mlp" and cfg.flexible:
        return "kyutai's per-codebook gating exists only inside a layer"
    if component in ("attention", "decoder_layer"):
        if cfg.head_dim * cfg.num_heads != cfg.dim:
            return f"kyutai ties head_dim to dim / num_heads ({cfg.dim} / {cfg.num_heads}), got head_dim {cfg.head_dim}"
    if component == "decoder_layer" and cfg.norm_eps != 1e-8:
        return f"kyutai's rms_norm_f32 fixes eps at 1e-8, got {cfg.norm_eps}"
    return None


def build_kyutai(component: str, cfg: TransformerConfig, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    from moshi.modules import gating, rope, transformer

    reason = kyutai_supports(component, cfg)
    if reason:
        raise ValueError(f"build_kyutai({component}): {reason}")
    kv_repeat = cfg.num_heads // cfg.num_kv_heads
    weights_per_step = cfg.num_codebooks if cfg.flexible else 0
    rotary = rope.RotaryEmbedding(interleave=True, max_period=cfg.rope_theta) if cfg.rope else None
    if component == "rmsnorm":
        module: nn.Module = transformer.RMSNorm(cfg.dim, eps=cfg.norm_eps, dtype=torch.float32)
    elif component == "gating_mlp":
        module = gating.make_gating(cfg.activation, cfg.dim, kyutai_dim_feedforward(cfg))
    elif component == "rope":
        module = rope.RotaryEmbedding(interleave=True, max_period=cfg.rope_theta)
    elif component == "attention":
        module = transformer.StreamingMultiheadAttention(
            embed_dim=cfg.dim,
            num_heads=cfg.num_heads,
            causal=True,
            context=cfg.context,
            rope=rotary,
            kv_repeat=kv_repeat,
            weights_per_step=weights_per_step,
        )
    elif component == "decoder_layer":
        module = transformer.StreamingTransformerLayer(
            d_model=cfg.dim,
            num_heads=cfg.num_heads,
            dim_feedforward=kyutai_dim_feedforward(cfg),
            causal=True,
            context=cfg.context,
            rope=rotary,
            norm="rms_norm_f32",
            gating=cfg.activation,
            kv_repeat=kv_repeat,
            weights_per_step=weights_per_step,
        )
    else:
        raise ValueError(f"build_kyutai: unknown component {component!r}; known: {COMPONENTS}")
    return module.to(dtype).eval()


def hf_additive_mask(positions: torch.Tensor, context: int | None, dtype: torch.dtype) -> torch.Tensor:
    """The (B, 1, T, T) additive mask HF's eager attention takes, built with the same visibility rule as ours."""
    delta = positions[:, :, None] - positions[:, None, :]
    visible = delta >= 0
    if context is not None:
        visible &= delta < context
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[:, None]


@torch.no_grad()
def call_hf(
    component: str, module: nn.Module, x: torch.Tensor, cfg: TransformerConfig, *, positions=None, layer_idx=None
) -> torch.Tensor:
    """Runs an HF module. layer_idx is passed as an integer tensor (HF rejects Python ints despite its docstring)."""
    from transformers.models.moshi import modeling_moshi as hf

    idx = None if layer_idx is None else torch.as_tensor(layer_idx)
    if component == "flexible_linear":
        return module(x, idx)
    if component == "rmsnorm":
        return module(x)
    if component == "gating_mlp":
        return module(x, idx) if cfg.flexible else module(x)
    if component == "rope":  # x: (B, T, H, D) queries; HF works on (B, H, T, D)
        cos, sin = module(x, positions)
        q = x.transpose(1, 2)
        out, _ = hf.apply_rotary_pos_emb(q, q, cos, sin)
        return out.transpose(1, 2)
    mask = hf_additive_mask(positions, cfg.context, x.dtype)
    if component == "attention":
        return module(x, attention_mask=mask, position_ids=positions, codebook_idx=idx)[0]
    if component == "decoder_layer":
        return module(x, attention_mask=mask, position_ids=positions, codebook_idx=idx)
    raise ValueError(f"call_hf: unknown component {component!r}")


@torch.no_grad()
def call_kyutai(component: str, module: nn.Module, x: torch.Tensor, cfg: TransformerConfig, *, positions=None):
    """Runs a kyutai module. kyutai positions are an offset per row plus arange(T): anything else is refused."""
    if positions is not None:
        offsets = positions[:, 0]
        expected = offsets[:, None] + torch.arange(positions.shape[1])
        if not torch.equal(positions, expected):
            raise ValueError("call_kyutai: kyutai positions must be contiguous per row (offset + arange(T))")
    if component == "rmsnorm" or component == "gating_mlp":
        return module(x)
    if component == "rope":  # x: (B, T, H, D)
        out, _ = module(x, x, offsets, time_before_heads=True)
        return out
    if int(positions[:, 0].abs().max()) != 0:
        raise ValueError("call_kyutai: kyutai attention outside streaming starts every row at position 0")
    if component == "attention":
        return module(x, x, x)
    if component == "decoder_layer":
        return module(x)
    raise ValueError(f"call_kyutai: unknown component {component!r}")


def kyutai_lm_kwargs(cfg: LMConfig) -> dict:
    """kyutai `LMModel` keyword arguments for cfg, in the layout of `moshi.models.loaders._lm_kwargs`."""
    t, d = cfg.temporal, cfg.depth
    dff = kyutai_dim_feedforward(t)
    hidden_scale = dff / t.dim
    if int(hidden_scale * t.dim) != dff:
        raise ValueError(f"kyutai cannot express dim_feedforward {dff} as int(hidden_scale * {t.dim})")
    for name, sub in (("temporal", t), ("depth", d)):
        if sub.norm_eps != 1e-8 or sub.num_kv_heads != sub.num_heads or sub.head_dim * sub.num_heads != sub.dim:
            raise ValueError(f"kyutai LMModel needs eps 1e-8, no grouped kv heads and head_dim = dim / heads ({name})")
    if d.activation != t.activation or d.context is not None or d.rope or not t.rope:
        raise ValueError(
            "kyutai LMModel: one activation for both stacks, rope only in the temporal one, no depth context"
        )
    return {
        "delays": list(cfg.delays),
        "n_q": cfg.n_q,
        "dep_q": cfg.dep_q,
        "card": cfg.card,
        "text_card": cfg.text_card,
        "dim": t.dim,
        "num_heads": t.num_heads,
        "num_layers": t.num_layers,
        "hidden_scale": hidden_scale,
        "norm": "rms_norm_f32",
        "context": t.context,
        "max_period": t.rope_theta,
        "gating": t.activation,
        "positional_embedding": "rope",
        "causal": True,
        "existing_text_padding_id": cfg.existing_text_padding_id,
        "depformer_dim": d.dim,
        "depformer_dim_feedforward": kyutai_dim_feedforward(d),
        "depformer_num_heads": d.num_heads,
        "depformer_num_layers": d.num_layers,
        "depformer_multi_linear": True,
        "depformer_weights_per_step": True,
        "depformer_pos_emb": "none",
    }


def build_kyutai_lm(cfg: LMConfig, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    from moshi.models.lm import LMModel

    return LMModel(**kyutai_lm_kwargs(cfg)).to(dtype).eval()


def hf_lm_config(cfg: LMConfig):
    """An HF MoshiConfig for the LM of cfg; its Mimi codec is a minimal one (only the LM is ever run)."""
    from transformers import MimiConfig, MoshiConfig

    t, d = cfg.temporal, cfg.depth
    if cfg.n_q != 2 * cfg.dep_q:
        raise ValueError(f"HF Moshi has n_q = 2 * num_codebooks, got n_q {cfg.n_q}, dep_q {cfg.dep_q}")
    mimi = MimiConfig(codebook_size=cfg.card, num_hidden_layers=1, num_filters=8, num_quantizers=cfg.n_q)
    depth = {
        "hidden_size": d.dim,
        "num_attention_heads": d.num_heads,
        "num_key_value_heads": d.num_kv_heads,
        "head_dim": d.head_dim,
        "num_hidden_layers": d.num_layers,
        "ffn_dim": d.ffn_dim,
        "hidden_act": d.activation,
        "rms_norm_eps": d.norm_eps,
    }
    hf = MoshiConfig.from_audio_encoder_config(
        mimi,
        hidden_size=t.dim,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        num_hidden_layers=t.num_layers,
        ffn_dim=t.ffn_dim,
        hidden_act=t.activation,
        rms_norm_eps=t.norm_eps,
        vocab_size=cfg.text_card,
        num_codebooks=cfg.dep_q,
        sliding_window=t.context or 2**31 - 1,
        rope_parameters={"rope_type": "default", "rope_theta": float(t.rope_theta)},
        depth_decoder_config=depth,
    )
    hf._attn_implementation = "eager"
    hf.depth_decoder_config._attn_implementation = "eager"
    return hf


def build_hf_lm(cfg: LMConfig, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers.models.moshi.modeling_moshi import MoshiForConditionalGeneration

    return MoshiForConditionalGeneration(hf_lm_config(cfg)).to(dtype).eval()


@torch.no_grad()
def call_hf_lm(model: nn.Module, codes: torch.Tensor, cfg: LMConfig, *, depth_attention_mask: bool = True) -> dict:
    """Runs HF's temporal decoder and depth decoder on kyutai's delayed, teacher-forced layout of `codes`.

    HF's forward does not apply the delay pattern (its generate does), so the delayed inputs are built here exactly as
    kyutai's LMModel.forward builds them; what runs inside is HF's own code, masks included. HF has no zero token
    (-1): such codes are refused. HF's depth decoder builds its causal mask only when given an attention_mask (without
    one, as MoshiForConditionalGeneration.forward calls it by default, codebooks attend to later codebooks):
    depth_attention_mask=True passes an all-ones mask, False reproduces HF's default.
    """
    from models_ref.delays import delay, undelay

    if bool((codes < 0).any()):
        raise ValueError("call_hf_lm: HF Moshi has no zero token (-1); pass codes without it")
    batch, _, length = codes.shape
    initial = torch.tensor([cfg.initial_text_token] + [cfg.initial_audio_token] * cfg.n_q)
    delayed = torch.cat([initial.view(1, -1, 1).expand(batch, -1, 1), delay(codes, cfg.delays, initial)], dim=2)
    inputs, targets = delayed[:, :, :-1], delayed[:, :, 1:]
    embeds = sum(model.embed_tokens[k](inputs[:, 1 + k]) for k in range(cfg.n_q))
    embeds = embeds + model.decoder.model.embed_tokens(inputs[:, 0])
    out = model.decoder(inputs_embeds=embeds, output_hidden_states=True)
    depth = model.depth_decoder(
        input_ids=targets[:, : cfg.dep_q].permute(0, 2, 1).reshape(batch * length, cfg.dep_q),
        last_hidden_state=out.last_hidden_state.reshape(batch * length, 1, -1),
        attention_mask=torch.ones(batch * length, cfg.dep_q, dtype=torch.long) if depth_attention_mask else None,
    )
    audio = depth.logits.view(batch, length, cfg.dep_q, -1).permute(0, 2, 1, 3)
    audio_logits, audio_mask = undelay(audio, cfg.delays[1 : 1 + cfg.dep_q])
    text_logits, text_mask = undelay(out.logits[:, None], cfg.delays[:1])
    return {
        "text_logits": text_logits,
        "text_mask": text_mask,
        "audio_logits": audio_logits,
        "audio_mask": audio_mask,
        "hidden": list(out.hidden_states),
    }
