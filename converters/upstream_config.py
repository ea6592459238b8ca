"""The configs upstream loaders read, written from an LMConfig: kyutai LMModel kwargs (the `config.json` of a kyutai
checkpoint, as `moshi.models.loaders.CheckpointInfo` reads it) and an HF MoshiConfig dict (the `config.json` of
`MoshiForConditionalGeneration.from_pretrained`). Plain JSON: neither torch, transformers nor moshi is imported.

A writer refuses a config its upstream cannot express: what it writes must read back (converters/lm_config.py) as the
same LMConfig, so that a converted checkpoint's config never silently describes another model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converters.config_fields import differences
from converters.formats import hf_refuses
from converters.lm_config import UNBOUNDED, from_hf_config, from_kyutai_kwargs, lm_config_to_dict
from converters.outdir import SAFETENSORS_NAME
from moshi_spec import kyutai
from moshi_spec.config import NORM_EPS, LMConfig

LAYOUT_ONLY = ("rope_layout", "rope_concat")
"""TransformerConfig fields that choose a weight layout, not the model: ours (rope_layout, which no upstream config
holds) and kyutai's (rope_concat, which only kyutai's holds: another upstream's config may lose it)."""


def to_kyutai_kwargs(cfg: LMConfig) -> dict[str, Any]:
    """kyutai `LMModel` keyword arguments for cfg, in the layout of `moshi.models.loaders._lm_kwargs`.

    Raises:
        ValueError: kyutai cannot express the temporal stack's MLP width as int(hidden_scale * dim), its norms (one
            kind for both stacks, with the eps kyutai fixes for it: NORM_EPS), or its plain FFN (exact gelu only).
    """
    t, d = cfg.temporal, cfg.depth
    if problem := kyutai_norm_problem(cfg) or kyutai_ffn_problem(cfg):
        raise ValueError(problem)
    dff = kyutai.dim_feedforward(t.dim, t.hidden) if t.gated else t.ffn_dim
    hidden_scale = dff / t.dim
    gating = t.activation if t.gated else "none"
    depformer_gating = d.activation if d.gated else "none"
    if int(hidden_scale * t.dim) != dff:
        raise ValueError(f"kyutai cannot express dim_feedforward {dff} as int(hidden_scale * {t.dim})")
    return {
        "delays": list(cfg.delays), "n_q": cfg.n_q, "dep_q": cfg.dep_q, "card": cfg.card, "text_card": cfg.text_card,
        "dim": t.dim, "num_heads": t.num_heads, "num_layers": t.num_layers, "hidden_scale": hidden_scale,
        "norm": t.norm, "context": t.context, "max_period": t.rope_theta, "gating": gating,
        "positional_embedding": kyutai.positional_embedding(t), "causal": True,
        "existing_text_padding_id": cfg.existing_text_padding_id,
        "depformer_dim": d.dim,
        "depformer_dim_feedforward": [kyutai.dim_feedforward(d.dim, f // 2) for f in d.ffn_dims] if d.ffn_dims
                                     else kyutai.dim_feedforward(d.dim, d.hidden) if d.gated else d.ffn_dim,
        "depformer_num_heads": d.num_heads, "depformer_num_layers": d.num_layers,
        "depformer_multi_linear": cfg.depth_multi_linear, "depformer_weights_per_step": d.flexible,
        "depformer_pos_emb": kyutai.positional_embedding(d),
        **({"depformer_weights_per_step_schedule": list(cfg.depth_schedule)} if cfg.depth_schedule else {}),
        **({"depformer_low_rank_embeddings": cfg.depth_low_rank} if cfg.depth_low_rank is not None else {}),
        **({"positional_scale": t.positional_scale} if t.positional_scale != 1.0 else {}),
        # the depformer inherits max_period and positional_scale unless its own are given
        **({"depformer_max_period": d.rope_theta} if d.rope_theta != t.rope_theta else {}),
        **({"depformer_positional_scale": d.positional_scale} if d.positional_scale != t.positional_scale else {}),
        # grouped kv heads (kyutai's kv_repeat); the depformer inherits kv_repeat unless depformer_kv_repeat is given
        **({"kv_repeat": t.num_heads // t.num_kv_heads} if t.num_kv_heads != t.num_heads else {}),
        **({"depformer_kv_repeat": d.num_heads // d.num_kv_heads}
           if d.num_heads // d.num_kv_heads != t.num_heads // t.num_kv_heads else {}),
        **({"depformer_norm": cfg.depformer_norm} if cfg.depformer_norm else {}),
        **({"norm_emb": True} if cfg.norm_emb else {}),
        **({"depformer_gating": depformer_gating} if depformer_gating != gating else {}),
        **({"layer_scale": t.layer_scale} if t.layer_scale is not None else {}),
        # LMModel passes layer_scale on to the depformer unless depformer_layer_scale says otherwise
        **({"depformer_layer_scale": d.layer_scale} if d.layer_scale != t.layer_scale else {}),
        **kyutai_head_kwargs(cfg),
    }  # fmt: skip


def kyutai_head_kwargs(cfg: LMConfig) -> dict[str, Any]:
    """kyutai's head options away from LMModel's defaults (bias_proj, text_card_out, extra heads, the end padding id,
    demux_second_text_stream), as LMModel takes them."""
    return {
        **({"bias_proj": True} if cfg.bias_proj else {}),
        **({"text_card_out": cfg.text_card_out} if cfg.text_card_out is not None else {}),
        **({"extra_heads_num_heads": cfg.extra_heads} if cfg.extra_heads else {}),
        **({"extra_heads_dim": cfg.extra_heads_dim} if cfg.extra_heads_dim != 6 else {}),
        **({"existing_text_end_padding_id": cfg.existing_text_end_padding_id}
           if cfg.existing_text_end_padding_id != 0 else {}),
        **({"demux_second_text_stream": True} if cfg.demux_second_text_stream else {}),
    }  # fmt: skip


def kyutai_norm_problem(cfg: LMConfig) -> str | None:
    """Why kyutai LMModel cannot build cfg's norms (None when it can): one `norm` kind for both stacks and the final
    norm, each kind with the eps create_norm_fn fixes for it."""
    t, d = cfg.temporal, cfg.depth
    if t.norm != d.norm:
        return f"kyutai LMModel has one norm kind for both stacks, got temporal {t.norm!r} and depth {d.norm!r}"
    for name, sub in (("temporal", t), ("depth", d)):
        if sub.norm_eps != NORM_EPS[sub.norm]:
            return f"kyutai's {sub.norm} fixes eps at {NORM_EPS[sub.norm]:g}, got {sub.norm_eps:g} ({name} stack)"
    return None


def kyutai_ffn_problem(cfg: LMConfig) -> str | None:
    """Why kyutai LMModel cannot build cfg's feed-forward blocks (None when it can): its plain FFN (gating="none") is
    StreamingTransformerLayer's default activation, exact GELU, and its depformer (a weight set per step) is gated."""
    for name, sub in (("temporal", cfg.temporal), ("depth", cfg.depth)):
        if not sub.gated and sub.activation != "gelu":
            return f"kyutai's plain FFN (gating='none') applies exact gelu, got activation {sub.activation!r} ({name})"
    return None


def to_hf_config(cfg: LMConfig, *, audio_encoder: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An HF MoshiConfig dict (what `MoshiConfig.from_dict` takes and config.json holds) for the LM of cfg.

    Args:
        audio_encoder: MimiConfig fields besides codebook_size (= cfg.card); by default HF's own, the released Mimi.

    Raises:
        ValueError: cfg's norms are layer norms (HF's Moshi has only MoshiRMSNorm, computed in float32), or it has
            depformer_norm (HF's depth decoder has no output norm) or norm_emb (nor have its embeddings).
    """
    t, d = cfg.temporal, cfg.depth
    if problem := hf_refuses("lm", cfg):
        raise ValueError(problem)

    def stack(s: Any) -> dict[str, Any]:
        return {
            "hidden_size": s.dim, "num_attention_heads": s.num_heads, "num_key_value_heads": s.num_kv_heads,
            "head_dim": s.head_dim, "num_hidden_layers": s.num_layers, "ffn_dim": s.ffn_dim,
            "hidden_act": s.activation, "rms_norm_eps": s.norm_eps,
        }  # fmt: skip

    return {
        "model_type": "moshi",
        "architectures": ["MoshiForConditionalGeneration"],
        **stack(t),
        "vocab_size": cfg.text_card,
        "audio_vocab_size": cfg.card,
        "num_codebooks": cfg.dep_q,
        "sliding_window": t.context or UNBOUNDED,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(t.rope_theta)},
        "audio_encoder_config": {"model_type": "mimi", "codebook_size": cfg.card, **(audio_encoder or {})},
        # a depth window over every step: HF's depth cache keeps sliding_window keys (MoshiDepthConfig's default 8)
        "depth_decoder_config": {"model_type": "moshi_depth", **stack(d), "sliding_window": cfg.dep_q},
    }


def upstream_config(fmt: str, cfg: LMConfig) -> dict[str, Any] | None:
    """The config.json a `fmt` checkpoint of cfg comes with for its upstream loader (kyutai: LM kwargs naming the
    weights file as `moshi_name`; hf: a MoshiConfig), or None for a format of ours (ref, flax).

    Raises:
        ValueError: the upstream config cannot express cfg, naming each field it would lose.
    """
    if fmt == "kyutai":
        written = to_kyutai_kwargs(cfg) | {"moshi_name": SAFETENSORS_NAME}
        back, what = from_kyutai_kwargs(written), "kyutai LMModel kwargs"
    elif fmt == "hf":
        written = to_hf_config(cfg)
        back, what = from_hf_config(written), "an HF MoshiConfig"
    else:
        return None
    lost = differences(lm_config_to_dict(cfg), lm_config_to_dict(back), ignore=LAYOUT_ONLY)
    if lost:
        raise ValueError(f"{what} cannot express this LMConfig: " + "; ".join(lost))
    return written
