"""Refactored PyTorch Mimi codec (kyutai `MimiModel`): one concept per file, mirroring `models_flax.mimi`.

conv: causal (transposed) convolutions and their streaming states; seanet: the convolutional encoder and decoder;
transformer: the LayerNorm / LayerScale transformers; quantizer: the split residual VQ; model: MimiModel, its batch
encode/decode and its explicit-state streaming API.
"""

from models_ref.mimi.conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTrState
from models_ref.mimi.model import MimiModel, MimiState
from models_ref.mimi.quantizer import Codebook, PointwiseProjection, ResidualVQ, SplitResidualVQ
from models_ref.mimi.seanet import DecoderStage, EncoderStage, ResnetBlock, SEANetDecoder, SEANetEncoder
from models_ref.mimi.transformer import (
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
    "PointwiseProjection",
    "ResidualVQ",
    "ResnetBlock",
    "SEANetDecoder",
    "SEANetEncoder",
    "SplitResidualVQ",
    "TransformerState",
]
