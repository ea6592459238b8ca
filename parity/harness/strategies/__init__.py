"""The one strategies module: hypothesis draws layer configs and inputs for every parity test.

Shapes come from small sets so that compiled code and upstream module construction stay cheap; values cover the
regimes where porting bugs show: input magnitudes from tiny (eps dominates RMSNorm) to large, per-row position offsets
(rope, masks), context windows shorter than the sequence, head_dim != dim / heads, grouped key/value heads, several
codebooks and every FlexibleLinear layer_idx mode.

One package, imported as one module (`from parity.harness import strategies`), split by level: `layers` (a layer's
config and call, raw attention inputs), `lm` (tiny LMs over kyutai's LMModel options, codes, the loss's inputs) and
`mimi` (test audio, Mimi configs).
"""

from parity.harness.strategies.layers import (
    ATTENTION_MAGNITUDES,
    DTYPES,
    LAYER_IDX_MODES,
    MAGNITUDES,
    AttentionCase,
    Case,
    attention_cases,
    cases,
    configs,
    kyutai_layer_options,
)
from parity.harness.strategies.lm import (
    DEPTH_SCHEDULES,
    HIDDEN_SCALES,
    POSITIONAL_EMBEDDINGS,
    delays,
    depth_options,
    ffn_options,
    head_options,
    kv_heads,
    lm_cases,
    loss_codes,
    loss_weights,
    positions,
    random_codes,
)
from parity.harness.strategies.mimi import SIGNALS, SPEECH_TEXT, audio, mimi_configs

__all__ = [
    "ATTENTION_MAGNITUDES",
    "DEPTH_SCHEDULES",
    "DTYPES",
    "HIDDEN_SCALES",
    "LAYER_IDX_MODES",
    "MAGNITUDES",
    "POSITIONAL_EMBEDDINGS",
    "SIGNALS",
    "SPEECH_TEXT",
    "AttentionCase",
    "Case",
    "attention_cases",
    "audio",
    "cases",
    "configs",
    "delays",
    "depth_options",
    "ffn_options",
    "head_options",
    "kv_heads",
    "kyutai_layer_options",
    "lm_cases",
    "loss_codes",
    "loss_weights",
    "mimi_configs",
    "positions",
    "random_codes",
]
