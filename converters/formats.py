"""Every format described as data, one descriptor each: how it names, lays out and stores weights.

A `Format` holds what any component kind may read (a linear's parameter name and layout, the checkpoint kind the CLI
writes, foreign key prefixes, legacy names), in `lm` how it spells Moshi's LM (`LMSpelling`: norm, MLP and attention
names, fused or per-codebook weights, decoder-layer children, layer stacks, the modules outside the stacks) and in
`mimi` how it spells the Mimi codec (`MimiSpelling`: SEANet as named modules or an indexed list (kyutai, HF),
convolution wrappers, the model's and a transformer layer's part prefixes, quantizer and codebook names). The shape
tables (converters/layers.py, converters/lm.py, converters/mimi.py) are built from these fields alone; the edges
(kyutai_hf.py, hf_ref.py, ref_flax.py, kyutai_ref.py, mimi_hf.py) say how weights move between two formats. Adding a
format (MLX) is a descriptor here plus the edge tables that reach it; adding a component kind is its spelling field
plus its tables (as Mimi was).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from converters.registry import register_format
from converters.rules import Pair


@dataclass(frozen=True, kw_only=True)
class LMSpelling:
    """How one format names Moshi's LM weights (temporal and depth transformers, embeddings, heads).

    Attributes:
        norm: the RMSNorm scale's parameter name.
        norm_alpha: the scale is stored (1, 1, D) (kyutai's `alpha`) rather than (D,).
        embedding: an embedding table's parameter name.
        mlp: the gated MLP's input (D -> 2 * hidden) and output (hidden -> D) linears.
        proj: attention's q/k/v/o projection modules, `{n}` standing for q, k, v, o.
        fused: (input, output) ModuleLists of one linear per weight set, input rows [q; k; v] (kyutai); None: `proj`.
        lists: per-codebook weights are ModuleLists, entry c under `{c}.` (of linears: `depformer_in.{c}.weight`; of
            whole MLPs: `{c}.linear_in.weight`), rather than one stacked (W, out, in) weight.
        flexible_linear: the format has HF's standalone per-codebook linear as a module of its own.
        children: decoder-layer role (norm1, norm2, attention, mlp) -> key prefix.
        stacks: "temporal" / "depth" -> layer-stack prefix; layer l's keys are `{prefix}{l}.` + the layer's keys.
        top: role -> module prefix of the LM outside its stacks: audio_emb (n_q embeddings), text_emb, norm (final
            norm), text_head, depth_in (per-codebook temporal -> depth projections), depth_emb (dep_q - 1 embeddings),
            depth_text_emb, depth_heads (per-codebook audio heads), depth_norms (per-codebook output norms, kyutai's
            depformer_norms; `{prefix}{c}.`), extra_heads (kyutai's extra heads, `{prefix}{i}.`). A head's bias
            (kyutai's bias_proj) is `bias` beside its weight; the text embeddings' demux linears `out1.` / `out2.`
            inside them.
    """

    norm: str = "weight"
    norm_alpha: bool = False
    embedding: str = "weight"
    mlp: tuple[str, str] = ("fc1.", "fc2.")
    proj: str = "{n}_proj."
    fused: tuple[str, str] | None = None
    lists: bool = False
    flexible_linear: bool = True
    children: Mapping[str, str]
    stacks: Mapping[str, str]
    top: Mapping[str, str]


MIMI_TOP = {
    "encoder": "encoder.",
    "encoder_transformer": "encoder_transformer.",
    "downsample": "downsample.",
    "quantizer": "quantizer.",
    "upsample": "upsample.",
    "decoder_transformer": "decoder_transformer.",
    "decoder": "decoder.",
}
"""Our Mimi model's parts (models_ref.mimi / models_flax.mimi MimiModel members) -> their key prefixes."""
MIMI_CHILDREN = {
    "norm1": "norm1.",
    "self_attn": "self_attn.",
    "layer_scale_1": "layer_scale_1.",
    "norm2": "norm2.",
    "mlp": "mlp.",
    "layer_scale_2": "layer_scale_2.",
}
"""Our Mimi transformer layer's parts -> their key prefixes."""


@dataclass(frozen=True, kw_only=True)
class MimiSpelling:
    """How one format names the Mimi codec's weights (converters/mimi.py builds every shape from these fields).

    The defaults are our ref / flax names (the modules of models_ref.mimi and models_flax.mimi); kyutai's and HF's
    differ. Part names (the keys of `top` and `children`, `stages.{i}.residuals.{j}`, `codebooks.{k}`) are ours in
    every format: a leaf is matched across formats by them, whatever its key.

    Attributes:
        sequential: SEANet's encoder and decoder are one indexed module list under this prefix (kyutai's
            `nn.Sequential` "model.", HF's `nn.ModuleList` "layers."), the indices counting the parameter-free ELUs
            (computed from the config by converters.mimi.seanet_modules); None: named input_conv /
            stages.{i}.(residuals.{j} | downsample | upsample) / output_conv modules.
        conv: a causal convolution's parameters' prefix inside its module (kyutai's StreamingConv1d wraps NormConv1d
            wrapping nn.Conv1d: "conv.conv."; HF's MimiConv1d wraps nn.Conv1d: "conv.").
        convtr: likewise for a causal transposed convolution ("convtr.convtr."; HF "conv.").
        resnet: a residual block's two convolutions (kyutai, HF: entries 1 and 3 of a list with ELUs).
        top: the model's parts (MIMI_TOP's keys) -> their prefixes (kyutai wraps its down/upsampling convolutions:
            "downsample.conv.", "upsample.convtr."; HF nests them in its encoder and decoder halves).
        layers: a transformer's layer stack, layer l under `{layers}{l}.` (kyutai's ProjectedTransformer wraps it).
        children: a transformer layer's parts (MIMI_CHILDREN's keys) -> their prefixes; "mlp": "" when the MLP's
            linears sit in the layer itself, as kyutai's do.
        linears: the MLP's input (D -> ffn_dim) and output (ffn_dim -> D) linears.
        fused: attention's (input, output) projections, input rows [q; k; v] (kyutai's one-entry ModuleLists); None:
            separate `proj` modules.
        proj: attention's q/k/v/o projection modules, `{n}` standing for q, k, v, o.
        quantizer: "semantic" / "acoustic" -> the split quantizer's two residual VQs.
        codebook: a residual VQ's codebook k, `{k}` standing for its index.
        embedding_sum: the codebook's sum of assigned vectors (bins, dim) (HF "embed_sum").
        initialized: the name of the codebooks' stored "k-means ran" flag (kyutai "_initialized", HF "initialized");
            None: no flag.
        conv_projections: the residual VQs' input / output projections are 1x1 convolutions, weight (out, in, 1),
            rather than linears without bias.
    """

    sequential: str | None = None
    conv: str = ""
    convtr: str = ""
    resnet: tuple[str, str] = ("conv1.", "conv2.")
    top: Mapping[str, str] = field(default_factory=lambda: dict(MIMI_TOP))
    layers: str = "layers."
    children: Mapping[str, str] = field(default_factory=lambda: dict(MIMI_CHILDREN))
    linears: tuple[str, str] = ("fc1.", "fc2.")
    fused: tuple[str, str] | None = None
    proj: str = "{n}_proj."
    quantizer: Mapping[str, str] = field(default_factory=lambda: {"semantic": "semantic.", "acoustic": "acoustic."})
    codebook: str = "codebooks.{k}."
    embedding_sum: str = "embedding_sum"
    initialized: str | None = None
    conv_projections: bool = False

    def __post_init__(self) -> None:
        for name, keys in (("top", MIMI_TOP), ("children", MIMI_CHILDREN)):
            if set(getattr(self, name)) != set(keys):
                raise ValueError(
                    f"MimiSpelling.{name} must name exactly {sorted(keys)}, got {sorted(getattr(self, name))}"
                )


@dataclass(frozen=True, kw_only=True)
class Format:
    """One weight format.

    Attributes:
        name: the format's name (`--src` / `--dst` of the CLI).
        kernel: a linear's parameter name.
        transposed: Flax layouts: linears are stored (..., in, out) rather than torch's (..., out, in), convolution
            kernels (K, in / groups, out) rather than (out, in / groups, K), transposed convolution kernels
            (K, in, out / groups) rather than (in, out / groups, K).
        checkpoint: the file kind the CLI reads and writes: "safetensors" or "orbax".
        foreign: key prefixes of other models in this format's checkpoints (HF's Mimi), which the CLI drops and lists
            unless told otherwise.
        legacy: component kind -> two-way rows (old name <-> current name, relative to the component) for released
            checkpoints' old names; forward they rewrite a state before anything else (with each instance's config),
            backward they give the old names' shapes, so that a state is checked in the names it uses.
        lm: how the format spells Moshi's LM; None: the format has no Moshi LM.
        mimi: how the format spells the Mimi codec; None: the format has no Mimi.
        refuses: (component, cfg) -> why a state of this format cannot hold that component's weights for cfg (None:
            it can). Checked where a conversion starts or ends, not on the hops between (HF's keys carry a layer-norm
            LM from kyutai to ref, although no HF model has them).
    """

    name: str
    kernel: str = "weight"
    transposed: bool = False
    checkpoint: str = "safetensors"
    foreign: tuple[str, ...] = ()
    legacy: Mapping[str, tuple[Pair, ...]] = field(default_factory=dict)
    lm: LMSpelling | None = None
    mimi: MimiSpelling | None = None
    refuses: Callable[[str, Any], str | None] = lambda component, cfg: None


HF_CHILDREN = {
    "norm1": "input_layernorm.",
    "norm2": "post_attention_layernorm.",
    "attention": "self_attn.",
    "mlp": "mlp.",
    "plain_mlp": "mlp.",  # HF's Moshi has no plain MLP (nor layer scales): a hop only, named as HF's Mimi names them
    "layer_scale_1": "self_attn_layer_scale.",
    "layer_scale_2": "mlp_layer_scale.",
}
OUR_STACKS = {"temporal": "layers.", "depth": "depth.layers."}
OUR_TOP = {
    "audio_emb": "embed_tokens.",
    "text_emb": "text_embed_tokens.",
    "norm": "norm.",
    "text_head": "lm_head.",
    "depth_in": "depth.input_projections.",
    "depth_emb": "depth.embed_tokens.",
    "depth_text_emb": "depth.text_embed_tokens.",
    "depth_heads": "depth.lm_heads.",
    "depth_norms": "depth.out_norms.",
    "extra_heads": "extra_heads.",
}

KYUTAI = Format(
    name="kyutai",
    # Released checkpoints fuse each stack's per-codebook projections step-major (codebook c at rows c*n:(c+1)*n),
    # as kyutai's own `_load_hook` reads them.
    legacy={
        "attention": (
            Pair("in_proj_weight", "in_projs.{c}.weight", "split_steps", "join_steps"),
            Pair("in_proj.weight", "in_projs.{c}.weight", "split_steps", "join_steps"),
            Pair("out_proj.weight", "out_projs.{c}.weight", "split_steps", "join_steps"),
        )
    },
    lm=LMSpelling(
        norm="alpha",
        norm_alpha=True,
        mlp=("linear_in.", "linear_out."),
        fused=("in_projs.", "out_projs."),
        lists=True,
        flexible_linear=False,  # kyutai uses ModuleLists of nn.Linear inside attention and gating instead
        children={
            "norm1": "norm1.",
            "norm2": "norm2.",
            "attention": "self_attn.",
            "mlp": "gating.",
            "plain_mlp": "",  # gating="none": linear1 / linear2 in the layer itself
            "layer_scale_1": "layer_scale_1.",
            "layer_scale_2": "layer_scale_2.",
        },
        stacks={"temporal": "transformer.layers.", "depth": "depformer.layers."},
        top={
            "audio_emb": "emb.",
            "text_emb": "text_emb.",
            "norm": "out_norm.",
            "text_head": "text_linear.",
            "depth_in": "depformer_in.",
            "depth_emb": "depformer_emb.",
            "depth_text_emb": "depformer_text_emb.",
            "depth_heads": "linears.",
            "depth_norms": "depformer_norms.",
            "extra_heads": "extra_heads.",
        },
    ),
    mimi=MimiSpelling(
        sequential="model.",
        conv="conv.conv.",
        convtr="convtr.convtr.",
        resnet=("block.1.", "block.3."),
        top=MIMI_TOP | {"downsample": "downsample.conv.", "upsample": "upsample.convtr."},
        layers="transformer.layers.",
        children=MIMI_CHILDREN | {"mlp": ""},
        linears=("linear1.", "linear2."),
        fused=("in_projs.0.", "out_projs.0."),
        quantizer={"semantic": "rvq_first.", "acoustic": "rvq_rest."},
        codebook="vq.layers.{k}._codebook.",
        initialized="_initialized",
        conv_projections=True,
    ),
)


def hf_refuses(component: str, cfg: Any) -> str | None:
    """What HF's Moshi has no weights for: layer norms (MoshiRMSNorm only), embedding norms (norm_emb), norms on
    the depth output (depformer_norm), plain MLPs (gating="none"), layer scales, kyutai's head options (bias_proj,
    text_card_out, extra heads, demux_second_text_stream) and a depth decoder other than one weight set per codebook
    with full-rank embeddings (kyutai's depformer_weights_per_step_schedule, depformer_multi_linear=False,
    depformer_weights_per_step=False, depformer_low_rank_embeddings); None when it has them all. Reads an LMConfig
    ("lm") or a TransformerConfig."""
    if component == "lm":
        if problem := hf_head_problem(cfg):
            return problem
        if cfg.norm_emb:
            return "HF's Moshi embeddings have no norm: norm_emb=True cannot be converted to hf"
        if cfg.depformer_norm is not None:
            kind = cfg.depformer_norm
            return f"HF's depth decoder has no output norm: depformer_norm={kind!r} cannot be converted to hf"
        if problem := hf_depth_problem(cfg):
            return problem
        stacks = {"temporal": cfg.temporal, "depth": cfg.depth}
    elif component == "decoder_layer":  # (a standalone layer_norm is Mimi's too, which HF has)
        stacks = {"this": cfg}
    else:
        return None
    if component == "lm":
        t, d = cfg.temporal, cfg.depth
        if not t.rope or t.sin_embedding or d.rope or d.sin_embedding:
            sin = {False: "", True: "sin"}  # kyutai's names (moshi_spec.kyutai.positional_embedding)
            kinds = ", ".join(
                f"{key}={(sin[s.sin_embedding] + '_rope' * s.rope).strip('_') or 'none'!r} (rope={s.rope}, "
                f"sin_embedding={s.sin_embedding})"
                for key, s in (("positional_embedding", t), ("depformer_pos_emb", d))
            )
            return (
                f"HF's Moshi has rope in the temporal stack only and no sinusoidal embedding: {kinds} cannot go to hf"
            )
    for name, sub in stacks.items():
        if getattr(sub, "layer_norm", False):
            return f"HF's Moshi has only RMSNorm: norm={sub.norm!r} ({name} stack) cannot be converted to hf"
        if not getattr(sub, "gated", True):
            return f"HF's Moshi has only the gated MLP: gating='none' ({name} stack) cannot be converted to hf"
        if getattr(sub, "ffn_dims", None) is not None:
            widths = sub.ffn_dims
            return (
                f"HF's Moshi has one MLP width per stack: per-set widths {widths} ({name} stack; kyutai's per-step "
                "depformer_dim_feedforward) cannot be converted to hf"
            )
        if getattr(sub, "layer_scale", None) is not None:
            scale = sub.layer_scale
            return f"HF's Moshi has no layer scale: layer_scale={scale!r} ({name} stack) cannot be converted to hf"
    return None


def hf_head_problem(cfg: Any) -> str | None:
    """What HF's Moshi lacks of kyutai's head options (None: none of them is set)."""
    if cfg.bias_proj:
        return "HF's Moshi heads have no bias: bias_proj=True cannot be converted to hf"
    if cfg.text_card_out is not None and cfg.text_card_out != cfg.text_card:
        return f"HF's text head has vocab_size outputs: text_card_out={cfg.text_card_out} cannot be converted to hf"
    if cfg.extra_heads:
        return f"HF's Moshi has no extra heads: extra_heads_num_heads={cfg.extra_heads} cannot be converted to hf"
    if cfg.demux_second_text_stream:
        return "HF's text embeddings do not demux: demux_second_text_stream=True cannot be converted to hf"
    return None


def hf_depth_problem(cfg: Any) -> str | None:
    """Why HF's depth decoder (one weight set and one input projection per codebook, full-rank embeddings) cannot hold
    cfg's depth transformer, naming kyutai's option; None when it can."""
    if not cfg.depth.flexible:
        why = "HF's depth decoder has a weight set per codebook"
        return f"{why}: depformer_weights_per_step=False cannot be converted to hf"
    if cfg.depth_schedule is not None:
        return (
            f"HF's depth decoder has a weight set per codebook: depformer_weights_per_step_schedule="
            f"{list(cfg.depth_schedule)} cannot be converted to hf"
        )
    if not cfg.depth_multi_linear:
        return (
            "HF's depth decoder projects each codebook's input: depformer_multi_linear=False cannot be converted to hf"
        )
    if cfg.depth_low_rank is not None:
        rank = cfg.depth_low_rank
        return f"HF's depth embeddings are full rank: depformer_low_rank_embeddings={rank} cannot be converted to hf"
    return None


HF = Format(
    name="hf",
    refuses=hf_refuses,
    foreign=("audio_encoder.",),  # MoshiForConditionalGeneration carries Mimi: not part of the LM
    lm=LMSpelling(
        proj="{n}_proj.linear.",  # MoshiLinear wraps nn.Linear / MoshiFlexibleLinear
        children=HF_CHILDREN,
        stacks={"temporal": "decoder.model.layers.", "depth": "depth_decoder.layers."},
        top={
            "audio_emb": "embed_tokens.",
            "text_emb": "decoder.model.embed_tokens.",
            "norm": "decoder.model.norm.",
            "text_head": "decoder.lm_head.",
            "depth_in": "depth_decoder.input_projections.",
            "depth_emb": "depth_decoder.embed_tokens.",
            "depth_text_emb": "depth_decoder.text_embed_tokens.",
            "depth_heads": "depth_decoder.lm_heads.",
            "depth_norms": "depth_decoder.out_norms.",  # HF has none: a hop only (converters/kyutai_hf.py)
            "extra_heads": "decoder.extra_heads.",  # likewise
        },
    ),
    # transformers' MimiModel (its own state_dict: the SEANet, transformer and down/upsampling of each half nested
    # under `encoder.` / `decoder.`; q/k rows in the half-split rope layout). Hub checkpoints keep the older flat names
    # (`encoder.layers.`, `encoder_transformer.`, `downsample.`), which transformers renames on load.
    mimi=MimiSpelling(
        sequential="layers.",
        conv="conv.",
        convtr="conv.",
        resnet=("block.1.", "block.3."),
        top={
            "encoder": "encoder.encoder_seanet.",
            "encoder_transformer": "encoder.encoder_transformer.",
            "downsample": "encoder.downsample.",
            "quantizer": "quantizer.",
            "upsample": "decoder.upsample.",
            "decoder_transformer": "decoder.decoder_transformer.",
            "decoder": "decoder.decoder_seanet.",
        },
        children={
            "norm1": "input_layernorm.",
            "self_attn": "self_attn.",
            "layer_scale_1": "self_attn_layer_scale.",
            "norm2": "post_attention_layernorm.",
            "mlp": "mlp.",
            "layer_scale_2": "mlp_layer_scale.",
        },
        quantizer={
            "semantic": "semantic_residual_vector_quantizer.",
            "acoustic": "acoustic_residual_vector_quantizer.",
        },
        codebook="layers.{k}.codebook.",
        embedding_sum="embed_sum",
        initialized="initialized",
        conv_projections=True,
    ),
)

REF = Format(name="ref", lm=LMSpelling(children=HF_CHILDREN, stacks=OUR_STACKS, top=OUR_TOP), mimi=MimiSpelling())

FLAX = Format(
    name="flax",
    kernel="kernel",
    transposed=True,
    checkpoint="orbax",
    lm=LMSpelling(children=HF_CHILDREN, stacks=OUR_STACKS, top=OUR_TOP),
    mimi=MimiSpelling(),
)

for _fmt in (KYUTAI, HF, REF, FLAX):
    register_format(_fmt)
