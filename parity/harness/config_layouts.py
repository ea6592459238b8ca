"""Config files as each upstream version writes them, or as its loader takes them (parity/test_config_readers.py
reads each and compares it field by field with the model upstream builds from the same file): kyutai `LMModel`
keyword arguments (a released config.json, the minimal kwargs, every optional key overridden) and HF `MoshiConfig`
config.json files (transformers 4.x and 5.x layouts), plus files upstream builds into something this port cannot run.
All at tiny sizes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

NO_WINDOW = 2**31 - 1
"""A window no int32 position reaches: the same model as no window."""

# ----------------------------------------------------------------------------------------------------------------------
# kyutai layouts: LMModel keyword arguments

KYUTAI_RELEASED = {
    # a kyutai checkpoint's config.json (moshi 0.2.x repos): _lm_kwargs' keys spelled out, LMModel extras, and the
    # entries loaders.CheckpointInfo pops before building the LM (moshi_name, mimi_name, tokenizer_name, model_type,
    # lm_gen_config); tiny sizes, with the 7B's hidden_scale and depformer_dim_feedforward = int(4.125 * depformer_dim)
    "moshi_name": "model.safetensors", "mimi_name": "mimi.safetensors", "tokenizer_name": "tokenizer.model",
    "model_type": "moshi", "lm_gen_config": {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25},
    "dim": 64, "text_card": 48, "existing_text_padding_id": 3, "n_q": 8, "dep_q": 4, "card": 32, "num_heads": 4,
    "num_layers": 2, "hidden_scale": 4.125, "causal": True, "layer_scale": None, "context": 8, "max_period": 10000,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 32,
    "depformer_dim_feedforward": int(4.125 * 32), "depformer_num_heads": 2, "depformer_num_layers": 2,
    "depformer_layer_scale": None, "depformer_multi_linear": True, "depformer_context": 4,
    "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 0, 1, 1, 1], "conditioners": {}, "cross_attention": False,
}  # fmt: skip
KYUTAI_MINIMAL = {
    # only what LMModel cannot default (num_layers, depformer_num_heads, delays for its n_q) and the switches this port
    # needs; the rest is LMModel's: dim 128, 8 heads, hidden_scale 4 (kyutai's 21/8 gating), n_q = dep_q = 8, card
    # 1024, text_card 32000, depformer_dim 256 (feed-forward hidden_scale * 256), no context, max_period 10000,
    # kv_repeat 1
    "num_layers": 1, "depformer_num_heads": 4, "delays": [0] * 9, "norm": "rms_norm_f32", "gating": "silu",
    "positional_embedding": "rope", "depformer_pos_emb": "none", "depformer_multi_linear": True,
    "depformer_weights_per_step": True,
}  # fmt: skip
KYUTAI_OVERRIDES = {
    # every optional key away from the 7B: grouped kv heads the depformer inherits, its own gating and feed-forward
    # width (not hidden_scale * depformer_dim), its layer count inherited, another rope period, context and padding id
    "dim": 32, "num_heads": 4, "kv_repeat": 2, "num_layers": 3, "hidden_scale": 2.5, "context": 5, "max_period": 500.0,
    "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope", "n_q": 4, "dep_q": 2, "card": 16,
    "text_card": 24, "text_card_out": 24, "existing_text_padding_id": 0, "delays": [0, 0, 2, 0, 2], "depformer_dim": 16,
    "depformer_num_heads": 4, "depformer_dim_feedforward": 48, "depformer_gating": "gelu", "depformer_pos_emb": "none",
    "depformer_multi_linear": True, "depformer_weights_per_step": True,
}  # fmt: skip

KYUTAI_POSITIONS = {
    # rope in kyutai's half-split checkpoint layout (rope_concat) with another period; the depformer with rope and the
    # sinusoidal embedding (sin_rope), its own period, and the positional_scale it inherits (no effect on rope_concat)
    "positional_embedding": "rope_concat", "max_period": 500.0, "positional_scale": 0.5,
    "depformer_pos_emb": "sin_rope", "depformer_max_period": 50.0,
}  # fmt: skip


KYUTAI_HEADS = {
    "bias_proj": True, "text_card_out": 31, "extra_heads_num_heads": 3, "extra_heads_dim": 4,
    "existing_text_end_padding_id": 2, "demux_second_stream": True,
}  # fmt: skip


def _lm_kwargs() -> dict[str, Any]:
    from moshi.models import loaders

    return loaders._lm_kwargs


def _without_key(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


KYUTAI_LAYOUTS: dict[str, Callable[[], dict[str, Any]]] = {
    "released config.json": lambda: KYUTAI_RELEASED,
    "loaders._lm_kwargs (7B)": _lm_kwargs,
    "minimal kwargs": lambda: KYUTAI_MINIMAL,
    "optional keys overridden": lambda: KYUTAI_OVERRIDES,
    # kyutai's head options, the demux under loaders' older name (loaders renames it to demux_second_text_stream)
    "head options": lambda: KYUTAI_OVERRIDES | KYUTAI_HEADS,
    # LMModel's default gating is "none": a plain temporal FFN (the depformer needs its own gating: weights per step)
    "gating left to LMModel's default": lambda: _without_key(KYUTAI_MINIMAL, "gating") | {"depformer_gating": "silu"},
    # LMModel's default positions: the sinusoidal embedding in both stacks (positional_embedding, depformer_pos_emb)
    "positions left to LMModel's default": lambda: {
        k: v for k, v in KYUTAI_MINIMAL.items() if k not in ("positional_embedding", "depformer_pos_emb")
    },
    "positions of their own": lambda: KYUTAI_MINIMAL | KYUTAI_POSITIONS,
    # the depformer's weight sharing: 3 weight sets for 4 steps, rank-8 embeddings, one depformer_in for every step
    "depformer schedule, low rank, one projection": lambda: (
        KYUTAI_RELEASED
        | {
            "depformer_weights_per_step_schedule": [2, 0, 1, 1],
            "depformer_low_rank_embeddings": 8,
            "depformer_multi_linear": False,
        }
    ),
    # LMModel's defaults: one depformer weight set and projection for every step, which allows its plain FFN
    "depformer without weights per step": lambda: (
        _without_key(_without_key(KYUTAI_RELEASED, "depformer_weights_per_step"), "depformer_multi_linear")
        | {"depformer_gating": "none"}
    ),
}

# ----------------------------------------------------------------------------------------------------------------------
# HF layouts: MoshiConfig config.json

TINY_MIMI = {
    # a small Mimi: the LM reads only its codebook_size, and the real one takes most of a meta-device build
    "model_type": "mimi", "codebook_size": 32, "num_quantizers": 8, "num_hidden_layers": 1, "hidden_size": 16,
    "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "num_filters": 2,
    "upsampling_ratios": [2], "codebook_dim": 8, "vector_quantization_hidden_dimension": 8, "upsample_groups": 16,
}  # fmt: skip
HF4 = {
    # transformers 4.45-4.57 (MoshiConfig.to_json_string, the layout of kmhf/hf-moshiko's config.json): rope_theta at
    # the top level (no rope_parameters), head_dim and num_key_value_heads as __init__ derived them, the depth config
    # with the four fields the parent set (audio_vocab_size, input_size, vocab_size, num_codebooks)
    "architectures": ["MoshiForConditionalGeneration"], "model_type": "moshi", "transformers_version": "4.45.0",
    "torch_dtype": "float32", "vocab_size": 48, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "head_dim": 8, "audio_vocab_size": 32, "max_position_embeddings": 3000,
    "rope_theta": 500.0, "hidden_act": "silu", "initializer_range": 0.02, "use_cache": True, "sliding_window": 8,
    "attention_dropout": 0.0, "ffn_dim": 64, "rms_norm_eps": 1e-08, "num_codebooks": 4, "tie_word_embeddings": False,
    "audio_encoder_config": TINY_MIMI,
    "depth_decoder_config": {
        "model_type": "moshi_depth", "vocab_size": 48, "hidden_size": 16, "input_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "audio_vocab_size": 32, "max_position_embeddings": 9,
        "hidden_act": "silu", "head_dim": 8, "initializer_range": 0.02, "use_cache": True, "sliding_window": 8,
        "attention_dropout": 0.0, "ffn_dim": 32, "rms_norm_eps": 1e-08, "num_codebooks": 4,
        "tie_word_embeddings": False,
    },
}  # fmt: skip
HF_SPARSE = {
    # MoshiConfig's keyword arguments as a dict (what from_dict takes, a hand-made config.json): no head_dim, null
    # num_key_value_heads, no rope key at all (10000), no sliding_window (MoshiConfig's 3000), and a depth config with
    # neither the inherited fields nor head_dim, num_key_value_heads, sliding_window (MoshiDepthConfig's 8)
    "model_type": "moshi", "vocab_size": 40, "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 6,
    "num_key_value_heads": None, "ffn_dim": 96, "num_codebooks": 3, "audio_encoder_config": TINY_MIMI,
    "depth_decoder_config": {"hidden_size": 24, "num_attention_heads": 3, "num_hidden_layers": 2, "ffn_dim": 40},
}  # fmt: skip
HF5_ARGS = {
    # written by this transformers (5.x) with MoshiConfig.save_pretrained: rope_parameters, every key spelled out;
    # grouped kv heads, a depth head_dim that is not hidden / heads, the depth stack's own activation
    "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "ffn_dim": 64,
    "vocab_size": 48, "num_codebooks": 4, "sliding_window": 6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 2e4},
    "depth_decoder_config": {"hidden_size": 16, "num_attention_heads": 2, "head_dim": 16, "num_hidden_layers": 1,
                             "ffn_dim": 48, "hidden_act": "gelu"},
}  # fmt: skip


def _hf5_saved() -> dict[str, Any]:
    from transformers import MimiConfig, MoshiConfig

    mimi = MimiConfig(**{k: v for k, v in TINY_MIMI.items() if k != "model_type"})
    with tempfile.TemporaryDirectory() as tmp:
        MoshiConfig.from_audio_encoder_config(mimi, **HF5_ARGS).save_pretrained(tmp)
        return json.loads((Path(tmp) / "config.json").read_text())


HF_LAYOUTS: dict[str, Callable[[], dict[str, Any]]] = {
    "transformers 5 save_pretrained": _hf5_saved,
    "transformers 4.x to_json_string": lambda: HF4,
    # files with a rope_scaling key (4.x read it when present, 5.x takes it as the legacy rope_parameters): null is
    # the plain rope, and a theta inside it wins over the top-level one in 5.x
    "4.x rope_scaling null": lambda: HF4 | {"rope_scaling": None},
    "rope_scaling with its theta": lambda: HF4 | {"rope_scaling": {"rope_type": "default", "rope_theta": 77.0}},
    "sparse hand-made dict": lambda: HF_SPARSE,
    "sliding_window 2**31-1 (our writer's no window)": lambda: HF4 | {"sliding_window": NO_WINDOW},
    "sliding_window 2**40": lambda: HF_SPARSE | {"sliding_window": 2**40},
}

# Files an upstream builds into a model this port cannot run: the reader must refuse them. Each row: the file, the
# reader's words, and what upstream built instead (field of `hf_built` / `kyutai_built`, its value).
HF_REFUSED = {
    "4.x rope_scaling linear": (
        HF4 | {"rope_scaling": {"type": "linear", "factor": 2.0}},
        "rope_scaling.rope_type='linear' is not supported", ("temporal.rope_theta", "linear rope"),
    ),
    "5.x rope_parameters dynamic": (
        HF4 | {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 500.0, "factor": 2.0}},
        "rope_parameters.rope_type='dynamic' is not supported", ("temporal.rope_theta", "dynamic rope"),
    ),
    "depth window shorter than its steps": (
        HF4 | {"depth_decoder_config": HF4["depth_decoder_config"] | {"sliding_window": 3}},
        "depth_decoder_config.sliding_window=3 is shorter than num_codebooks=4", ("depth.context", 3),
    ),
}  # fmt: skip
KYUTAI_REFUSED = {
    "non-causal attention": (KYUTAI_MINIMAL | {"causal": False}, "causal=False is not supported",
                             ("temporal.causal", False)),
}  # fmt: skip
