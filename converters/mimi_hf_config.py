"""HF transformers' MimiConfig as plain JSON, read and written: `--dst hf` for a Mimi writes the `config.json` that
`transformers.MimiModel.from_pretrained(OUT)` loads, and an HF Mimi `config.json` (a directory's, or `--config`) reads
as a MimiConfig. Neither side imports transformers.

HF's keys and ours (a key the file leaves out means HF's MimiConfig default, `HF_DEFAULTS`: the released Mimi):
    sampling_rate: sample_rate                   audio_channels: seanet.channels
    hidden_size: seanet.dimension and transformer.dim
    num_filters, num_residual_layers, kernel_size, last_kernel_size, residual_kernel_size, pad_mode, compress: seanet's
    upsampling_ratios: seanet.ratios             dilation_growth_rate: seanet.dilation_base
    codebook_size: bins                          codebook_dim: codebook_dim (null: hidden_size)
    num_quantizers: n_q                          num_semantic_quantizers: n_q_semantic
    num_hidden_layers, num_attention_heads: the transformer's
    num_key_value_heads, head_dim (null: hidden_size // heads): the transformer's
    intermediate_size: transformer.ffn_dim       hidden_act: transformer.activation     norm_eps: transformer.norm_eps
    rope_parameters.rope_theta: transformer.rope_theta (read as for the LM: `lm_config.hf_rope`)
    sliding_window: transformer.context          layer_scale_initial_scale: layer_scale
    frame_rate (`_frame_rate` in HF's own `to_dict`): frame_rate; absent or null, HF derives sampling_rate /
        (prod(upsampling_ratios) * 2), a downsampling stride of 2, and so does this reader.
HF's Mimi is fixed where kyutai's is not, and a file asking otherwise is refused by name: use_causal_conv true,
trim_right_ratio 1, use_conv_shortcut false, vector_quantization_hidden_dimension = codebook_dim, upsample_groups =
hidden_size, attention_bias false, the default rope type. Not in HF's config: codebook_eps (HF's codebooks clamp at
1e-5: `HF_CODEBOOK_EPS`) and num_codebooks (HF's encode takes `num_quantizers` per call; read as min(8, n_q), as
kyutai's get_mimi; writing leaves it out). Configs HF's MimiModel cannot be, whichever way they come
(`hf_mimi_problems`), are refused by name too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from converters.config_fields import building, differences, field_problems
from converters.lm_config import hf_rope
from converters.mimi_config import KYUTAI_NUM_CODEBOOKS, mimi_config_to_dict
from moshi_spec.config import TransformerConfig
from moshi_spec.mimi import MimiConfig, SEANetConfig

HF_CODEBOOK_EPS = 1e-5
"""MimiEuclideanCodebook's epsilon (MimiVectorQuantization builds it with the default; no config field)."""

HF_DEFAULTS: dict[str, Any] = {
    "sampling_rate": 24_000, "audio_channels": 1, "hidden_size": 512, "num_filters": 64, "num_residual_layers": 1,
    "upsampling_ratios": None, "kernel_size": 7, "last_kernel_size": 3, "residual_kernel_size": 3,
    "dilation_growth_rate": 2, "use_causal_conv": True, "pad_mode": "constant", "compress": 2,
    "trim_right_ratio": 1.0, "codebook_size": 2048, "codebook_dim": 256, "num_quantizers": 32,
    "use_conv_shortcut": False, "vector_quantization_hidden_dimension": 256, "num_semantic_quantizers": 1,
    "upsample_groups": 512, "num_hidden_layers": 8, "intermediate_size": 2048, "num_attention_heads": 8,
    "num_key_value_heads": 8, "head_dim": None, "hidden_act": "gelu", "norm_eps": 1e-5, "sliding_window": 250,
    "layer_scale_initial_scale": 0.01, "attention_bias": False,
}  # fmt: skip
"""transformers' MimiConfig defaults (5.x as 4.4x; its `__post_init__` turns upsampling_ratios null into
HF_RATIOS and head_dim null into hidden_size // num_attention_heads)."""
HF_RATIOS = [8, 6, 5, 4]

HF_FIELDS = {
    **dict.fromkeys(
        "sampling_rate audio_channels hidden_size num_filters num_residual_layers kernel_size last_kernel_size "
        "residual_kernel_size dilation_growth_rate compress codebook_size num_quantizers num_semantic_quantizers "
        "num_hidden_layers intermediate_size num_attention_heads num_key_value_heads sliding_window".split(),
        "int",
    ),
    **dict.fromkeys("codebook_dim head_dim vector_quantization_hidden_dimension upsample_groups".split(), "int?"),
    "upsampling_ratios": "ints",
    "pad_mode": "str",
    "hidden_act": "str",
    "norm_eps": "num0",
    "layer_scale_initial_scale": "num",
    "frame_rate": "num?",
    "_frame_rate": "num?",
}
HF_FIXED: dict[str, Any] = {
    "use_causal_conv": True, "trim_right_ratio": 1.0, "use_conv_shortcut": False, "attention_bias": False,
}  # fmt: skip
"""Keys whose value HF's Mimi reads but this port (and kyutai's Mimi) has only one of."""

HF_NAMES = {
    "sample_rate": "sampling_rate", "frame_rate": "frame_rate", "layer_scale": "layer_scale_initial_scale",
    "codebook_dim": "codebook_dim", "bins": "codebook_size", "n_q": "num_quantizers",
    "n_q_semantic": "num_semantic_quantizers", "num_codebooks": "num_quantizers (num_codebooks: min(8, n_q))",
    "transformer.dim": "hidden_size",
}  # fmt: skip
HF_SEANET_NAMES = {
    "channels": "audio_channels", "dimension": "hidden_size", "n_filters": "num_filters",
    "n_residual_layers": "num_residual_layers", "ratios": "upsampling_ratios", "kernel_size": "kernel_size",
    "residual_kernel_size": "residual_kernel_size", "last_kernel_size": "last_kernel_size",
    "dilation_base": "dilation_growth_rate", "compress": "compress", "pad_mode": "pad_mode",
}  # fmt: skip
HF_TRANSFORMER_NAMES = {
    "dim": "hidden_size", "num_heads": "num_attention_heads", "num_layers": "num_hidden_layers",
    "ffn_dim": "intermediate_size", "head_dim_override": "head_dim", "num_kv_heads_override": "num_key_value_heads",
    "activation": "hidden_act", "norm_eps": "norm_eps", "rope_theta": "rope_parameters.rope_theta",
    "context": "sliding_window",
}  # fmt: skip
WHERE = "HF Mimi config"


def from_hf_mimi_config(config: Mapping[str, Any]) -> MimiConfig:
    """The MimiConfig of an HF `MimiConfig.to_dict()` (a `config.json` of `MimiModel`), every problem listed together
    and named by the file's keys (see the module docstring). Keys this reader does not know (a PreTrainedConfig's
    own: `id2label`, `dtype`, ...) are not read.

    Raises:
        ValueError: a model_type other than "mimi", values of the wrong type, settings HF's Mimi has and this port
            does not, or a config HF's MimiModel cannot be (`hf_mimi_problems`).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{WHERE}: got {type(config).__name__}, not a JSON object")
    d = HF_DEFAULTS | {k: v for k, v in config.items() if k in HF_DEFAULTS or k in HF_FIELDS}
    d["upsampling_ratios"] = HF_RATIOS if d["upsampling_ratios"] is None else d["upsampling_ratios"]
    problems = field_problems(d, HF_FIELDS)
    if config.get("model_type", "mimi") != "mimi":
        problems.append(f"model_type={config['model_type']!r} is not 'mimi'")
    problems += [f"{key}={d[key]!r} is not supported (HF's Mimi as this port: {want!r})"
                 for key, want in HF_FIXED.items() if d[key] != want]  # fmt: skip
    theta, _, rope_problems = hf_rope(config)
    problems += rope_problems
    if problems:
        raise ValueError(f"{WHERE}: " + "; ".join(problems))
    dim, heads, ratios = d["hidden_size"], d["num_attention_heads"], d["upsampling_ratios"]
    codebook_dim = d["codebook_dim"] or dim
    for key, want in (("vector_quantization_hidden_dimension", codebook_dim), ("upsample_groups", dim)):
        if d[key] is not None and d[key] != want:
            problems.append(f"{key}={d[key]} is not {want} (HF's Mimi as this port: {want})")
    head_dim, kv_heads = d["head_dim"] or dim // heads, d["num_key_value_heads"]
    if d["head_dim"] is None and dim % heads:
        problems.append(f"num_attention_heads={heads} does not divide hidden_size={dim} (head_dim is null)")
    if heads % kv_heads:
        problems.append(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    frame_rate = config.get("frame_rate", config.get("_frame_rate"))
    if frame_rate is None and ratios and all(r >= 1 for r in ratios):  # HF's own derivation
        frame_rate = d["sampling_rate"] / (math.prod(ratios) * 2)
    if problems:
        raise ValueError(f"{WHERE}: " + "; ".join(problems))
    with building(WHERE, HF_SEANET_NAMES):
        seanet = SEANetConfig(
            channels=d["audio_channels"], dimension=dim, n_filters=d["num_filters"],
            n_residual_layers=d["num_residual_layers"], ratios=tuple(ratios), kernel_size=d["kernel_size"],
            residual_kernel_size=d["residual_kernel_size"], last_kernel_size=d["last_kernel_size"],
            dilation_base=d["dilation_growth_rate"], compress=d["compress"], pad_mode=d["pad_mode"],
        )  # fmt: skip
    with building(WHERE, HF_TRANSFORMER_NAMES):
        transformer = TransformerConfig(
            dim=dim, num_heads=heads, num_layers=d["num_hidden_layers"], ffn_dim=d["intermediate_size"],
            head_dim_override=head_dim if head_dim * heads != dim else None,
            num_kv_heads_override=kv_heads if kv_heads != heads else None, activation=d["hidden_act"],
            norm_eps=float(d["norm_eps"]), rope=True, rope_theta=float(theta), rope_layout="interleaved",
            context=d["sliding_window"],
        )  # fmt: skip
    with building(WHERE, HF_NAMES):
        cfg = MimiConfig(
            sample_rate=d["sampling_rate"], frame_rate=float(frame_rate), seanet=seanet, transformer=transformer,
            layer_scale=float(d["layer_scale_initial_scale"]), codebook_dim=codebook_dim, bins=d["codebook_size"],
            n_q=d["num_quantizers"], n_q_semantic=d["num_semantic_quantizers"],
            num_codebooks=min(KYUTAI_NUM_CODEBOOKS, d["num_quantizers"]), codebook_eps=HF_CODEBOOK_EPS,
        )  # fmt: skip
    problems = hf_mimi_problems(cfg)
    if problems:
        raise ValueError(f"{WHERE}: " + "; ".join(problems))
    return cfg


def hf_mimi_problems(cfg: MimiConfig) -> list[str]:
    """Why transformers' MimiModel cannot be cfg's Mimi (none: it can), each naming HF's key."""
    s, t = cfg.seanet, cfg.transformer
    problems = []
    if s.channels not in (1, 2):
        problems.append(f"audio_channels={s.channels}: HF's Mimi takes 1 or 2 audio channels")
    if cfg.bins & (cfg.bins - 1):
        problems.append(f"codebook_size={cfg.bins}: HF's Mimi needs a power of 2")
    if cfg.codebook_dim == cfg.dim:
        problems.append(
            f"codebook_dim={cfg.codebook_dim} equals hidden_size: HF's residual VQs then drop their projections; "
            "kyutai and ours keep them (force_projection)"
        )
    if cfg.codebook_eps != HF_CODEBOOK_EPS:
        problems.append(f"codebook_eps {cfg.codebook_eps}: HF's codebooks clamp the cluster usage at {HF_CODEBOOK_EPS}")
    if t.context is None:
        problems.append(
            "sliding_window: HF's Mimi attention always has a sliding window (an int); context None is unbounded"
        )
    if cfg.resample_stride < 2:
        problems.append(
            f"frame_rate={cfg.frame_rate:g} equals the encoder's: HF's Mimi builds no down/upsampling convolution then"
        )
    if cfg.sample_rate % cfg.hop_length:
        problems.append(
            f"sampling_rate={cfg.sample_rate} is not a multiple of prod(upsampling_ratios)={cfg.hop_length}: HF rounds "
            "the encoder frame rate up"
        )
    return problems


def to_hf_mimi_config(cfg: MimiConfig) -> dict[str, Any]:
    """The `config.json` of transformers' MimiModel for cfg: every key of `HF_DEFAULTS` (and frame_rate, the rope
    parameters, model_type and architectures), which `MimiModel.from_pretrained` reads back as cfg.

    Raises:
        ValueError: HF's Mimi cannot be cfg (`hf_mimi_problems`) or its config cannot say it, naming each field.
    """
    problems = hf_mimi_problems(cfg)
    if problems:
        raise ValueError(f"{WHERE} cannot express this MimiConfig: " + "; ".join(problems))
    s, t = cfg.seanet, cfg.transformer
    written = {
        "model_type": "mimi", "architectures": ["MimiModel"], "sampling_rate": cfg.sample_rate,
        "frame_rate": cfg.frame_rate, "audio_channels": s.channels, "hidden_size": s.dimension,
        "num_filters": s.n_filters, "num_residual_layers": s.n_residual_layers, "upsampling_ratios": list(s.ratios),
        "kernel_size": s.kernel_size, "last_kernel_size": s.last_kernel_size,
        "residual_kernel_size": s.residual_kernel_size, "dilation_growth_rate": s.dilation_base,
        "use_causal_conv": True, "pad_mode": s.pad_mode, "compress": s.compress, "trim_right_ratio": 1.0,
        "codebook_size": cfg.bins, "codebook_dim": cfg.codebook_dim, "num_quantizers": cfg.n_q,
        "use_conv_shortcut": False, "vector_quantization_hidden_dimension": cfg.codebook_dim,
        "num_semantic_quantizers": cfg.n_q_semantic, "upsample_groups": s.dimension, "num_hidden_layers": t.num_layers,
        "intermediate_size": t.ffn_dim, "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads,
        "head_dim": t.head_dim, "hidden_act": t.activation, "norm_eps": t.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(t.rope_theta)}, "sliding_window": t.context,
        "layer_scale_initial_scale": cfg.layer_scale, "attention_bias": False, "use_cache": False,
        "use_streaming": False,
    }  # fmt: skip
    back = from_hf_mimi_config(written).replace(num_codebooks=cfg.num_codebooks)
    lost = differences(mimi_config_to_dict(cfg), mimi_config_to_dict(back))
    if lost:
        raise ValueError(f"{WHERE} cannot express this MimiConfig: " + "; ".join(lost))
    return written


__all__ = ["HF_CODEBOOK_EPS", "HF_DEFAULTS", "from_hf_mimi_config", "hf_mimi_problems", "to_hf_mimi_config"]
