"""Flax NNX port of kyutai's Mimi audio codec (moshi 0.2.13 `MimiModel`), one concept per file:

- conv.py: `CausalConv1d`, `CausalConvTranspose1d` and their streaming states (`ConvState`, `ConvTrState`);
- seanet.py: `ResnetBlock`, `EncoderStage`, `DecoderStage`, `SEANetEncoder`, `SEANetDecoder`;
- transformer.py: `LayerNorm`, `LayerScale`, `PlainMLP`, `MimiTransformerLayer`, `MimiTransformer`,
  `TransformerState`;
- quantizer.py: `Codebook`, `ResidualVQ`, `SplitResidualVQ`;
- model.py: `MimiModel` (batch encode / decode, captures, explicit-state streaming) and `MimiState`;
- checkpoint.py: `from_checkpoint(path)`, a MimiModel from a flax OUT of `python -m converters` (the LM's loader).

Parameter paths equal models_ref.mimi's state_dict keys, a conv's or linear's `weight` being `kernel` here (layouts in
conv.py). Imports jax and flax only.
"""

from models_flax.mimi.checkpoint import from_checkpoint
from models_flax.mimi.conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTrState
from models_flax.mimi.model import MimiModel, MimiState
from models_flax.mimi.quantizer import Codebook, ResidualVQ, SplitResidualVQ
from models_flax.mimi.seanet import DecoderStage, EncoderStage, ResnetBlock, SEANetDecoder, SEANetEncoder
from models_flax.mimi.transformer import (
    LayerNorm,
    LayerScale,
    MimiTransformer,
    MimiTransformerLayer,
    PlainMLP,
    TransformerState,
)

__all__ = [
    "CausalConv1d",
    "CausalConvTranspose1d",
    "Codebook",
    "ConvState",
    "ConvTrState",
    "DecoderStage",
    "EncoderStage",
    "LayerNorm",
    "LayerScale",
    "MimiModel",
    "MimiState",
    "MimiTransformer",
    "MimiTransformerLayer",
    "PlainMLP",
    "ResidualVQ",
    "ResnetBlock",
    "SEANetDecoder",
    "SEANetEncoder",
    "SplitResidualVQ",
    "TransformerState",
    "from_checkpoint",
]
