"""kyutai <-> hf for the Mimi codec's leaves: rows of the one kyutai <-> hf edge (converters/kyutai_hf.py registers
this table with the LM's; the engine has one edge per ordered pair of formats).

The component kinds (converters/mimi.py) place every leaf under its key in both formats (kyutai's `model.{i}.` and
HF's `layers.{i}.` SEANet indices, which coincide; HF's `encoder.` / `decoder.` halves; HF's layer children
`input_layernorm.` / `self_attn_layer_scale.` / `mlp.` ...; `semantic_residual_vector_quantizer.` ...), so the rows
only say what changes inside a leaf, as transformers' own `convert_mimi_checkpoint_to_pytorch.py` does:
- convolutions: kyutai's `conv.conv.` / `convtr.convtr.` wrappers -> HF's `conv.`, torch layouts kept;
- attention: `in_projs.0.weight` rows [q; k; v] split into q/k/v_proj, q and k permuted per head from kyutai's
  interleaved rope pairs (2i, 2i + 1) to HF's rotate_half pairs (i, i + hd/2) (`unfuse_qkv`: transforms.
  interleaved_to_half, the script's `permute`), v untouched; `out_projs.0` -> o_proj;
- MLP: `linear1` / `linear2` (in the layer) -> `mlp.fc1` / `mlp.fc2`;
- quantizer projections: 1x1 convolutions (out, in, 1) in both;
- codebooks: `embedding_sum` -> `embed_sum`, `cluster_usage` kept, `_initialized` -> `initialized`, kept bit for bit
  but refused unless 1 either way (HF never reads it; kyutai <-> ref refuses an untrained codebook the same way).
LayerNorm and LayerScale keep their parameter names (their modules are renamed by the kinds).
"""

from __future__ import annotations

from converters import mimi  # noqa: F401  (registers the component kinds these rows name)
from converters.rules import Pair


def _wrapped(kyutai: str, hf: str) -> tuple[Pair, ...]:
    return (Pair(f"{kyutai}weight", f"{hf}weight"), Pair(f"{kyutai}bias", f"{hf}bias"))


TABLE: dict[str, tuple[Pair, ...]] = {
    "causal_conv1d": _wrapped("conv.conv.", "conv."),
    "causal_conv_transpose1d": _wrapped("convtr.convtr.", "conv."),
    "layer_norm": (Pair("weight", "weight"), Pair("bias", "bias")),
    "layer_scale": (Pair("scale", "scale"),),
    "mimi_attention": (
        Pair("in_projs.0.weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight"), "unfuse_qkv", "fuse_qkv"),
        Pair("out_projs.0.weight", "o_proj.weight"),
    ),
    "plain_mlp": (Pair("linear1.weight", "fc1.weight"), Pair("linear2.weight", "fc2.weight")),
    "vq_projection": (Pair("weight", "weight"),),
    "codebook": (
        Pair("_initialized", "initialized", "check_initialized", "check_initialized"),
        Pair("cluster_usage", "cluster_usage"),
        Pair("embedding_sum", "embed_sum"),
    ),
}
