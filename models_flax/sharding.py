"""Sharding rules for the Moshi LM on a ('dp', 'fsdp') mesh: a table from parameter path to PartitionSpec.

The plan is FSDP (ZeRO-3): every big matrix is split along one large axis over 'fsdp', norms are replicated, and the
batch is split over 'dp' and 'fsdp' together (`DATA_SPEC`), so each device holds 1/fsdp of the weights and its own
slice of the batch; XLA all-gathers a layer's weights where it needs them. 'dp' replicates the weights (pure data
parallelism across fsdp groups).

Which axis is split (Megatron-style pairs, so the gated hidden width F and the heads stay split between the two matmuls
of a block when XLA chooses not to gather):
    embeddings (V + 1, D): D. The row axis is V + 1 (kyutai's extra initial-token row): 32001 and 2049 in Moshi 7B,
        odd, so it divides no mesh axis.
    q/k/v_proj (D, H*hd), fc1 (D, F): the output axis; o_proj (H*hd, D), fc2 (F/2, D): the input axis.
    lm_head (D, text_card) and depth.lm_heads (K, Dd, card): the vocabulary.
    depth.input_projections (K, D, Dd): D. Flexible (per-codebook) kernels keep their leading codebook axis K
        replicated: each depth step selects one codebook's matrix.

Every parameter must match exactly one rule (`fullmatch` on its '.'-joined nnx path; where two match, as the depth
layers' kernels do, the one of the parameter's rank: a flexible stack's are (K, in, out)); an unmatched or doubly
matched path, a spec whose rank differs from the parameter's, an axis the mesh lacks, or a dimension the mesh axis
does not divide is an error naming the paths. A rule may opt into `replicate_if_indivisible`, which replicates only that
dimension; the default table needs it only for the text head (kyutai's text_card_out may be odd): every other split
dimension divides by any fsdp that divides 16 (`tiny`) or 256 (`moshi_7b`).

Works on abstract models (`nnx.eval_shape`) and abstract meshes (`abstract_mesh`), so `describe` plans the 7B on any
host without allocating it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("dp", "fsdp")
DATA_SPEC = P(("dp", "fsdp"))  # codes (B, 1 + n_q, T): B over every device (FSDP); P("dp") also works, see shard_batch


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the table.

    Attributes:
        pattern: regex, fullmatched against the '.'-joined parameter path.
        spec: one entry per parameter dimension: None (replicated), a mesh axis name, or a tuple of names.
        replicate_if_indivisible: replicate a dimension the mesh axis does not divide instead of raising.
        why: the reason for this split (printed by `describe`).
    """

    pattern: str
    spec: P
    replicate_if_indivisible: bool = False
    why: str = ""


_LAYER = r"layers\.\d+\."
_SHARED = r"(depth\.)?" + _LAYER  # rank 2: also a shared depth stack's kernels; a flexible one's are rank 3
RULES: tuple[Rule, ...] = (
    # Embeddings (V + 1, D): the row count is odd in Moshi 7B, so split D.
    Rule(r"(depth\.)?(text_)?embed_tokens(\.\d+)?\.weight", P(None, "fsdp"), why="(V+1, D): D; V+1 is odd"),
    Rule(r"(depth\.)?(text_)?embed_tokens(\.\d+)?\.norm\.(weight|bias)", P(None), why="norm: replicated"),
    Rule(r"depth\.(text_)?embed_tokens(\.\d+)?\.low_rank\.kernel", P(None, "fsdp"), why="low rank (r, Dd): Dd"),
    # Temporal transformer: kernels are (in, out).
    # (and a depth stack sharing one weight set across steps, kyutai's depformer_weights_per_step=False)
    Rule(_SHARED + r"self_attn\.[qkv]_proj\.kernel", P(None, "fsdp"), why="(D, H*hd): heads"),
    Rule(_SHARED + r"self_attn\.o_proj\.kernel", P("fsdp", None), why="(H*hd, D): heads"),
    Rule(_SHARED + r"mlp\.fc1\.kernel", P(None, "fsdp"), why="(D, F): F"),
    Rule(_SHARED + r"mlp\.fc2\.kernel", P("fsdp", None), why="(F/2, D): F/2 (plain MLP: (F, D))"),
    Rule(_LAYER + r"(input|post_attention)_layernorm\.weight", P(None), why="norm: replicated"),
    Rule(r"norm\.weight", P(None), why="norm: replicated"),
    Rule(r"(depth\.)?(" + _LAYER + r"(input|post_attention)_layer)?norm\.bias", P(None), why="layer norm: replicated"),
    Rule(
        r"lm_head\.kernel",
        P(None, "fsdp"),
        replicate_if_indivisible=True,  # a kyutai text_card_out may be odd (text_card is 32000 in Moshi 7B)
        why="(D, text_out): vocabulary",
    ),
    # kyutai's head options: small, replicated (text_card_out need not divide); demux linears (D, D) split like the
    # embeddings they follow
    Rule(r"lm_head\.bias", P(None), why="bias_proj (text_out,): replicated"),
    Rule(r"depth\.lm_heads\.bias", P(None, None), why="bias_proj (K, card): replicated"),
    Rule(r"extra_heads\.\d+\.kernel", P(None, None), why="extra heads (D, extra_heads_dim): replicated"),
    Rule(r"(depth\.)?text_embed_tokens\.out[12]\.kernel", P(None, "fsdp"), why="demux (D, D): output D"),
    # Depth transformer: flexible kernels (K, in, out), the codebook axis K replicated.
    Rule(r"depth\.input_projections\.kernel", P(None, "fsdp", None), why="(K, D, Dd): D"),
    Rule(r"depth\." + _LAYER + r"self_attn\.[qkv]_proj\.kernel", P(None, None, "fsdp"), why="(K, Dd, H*hd): heads"),
    Rule(r"depth\." + _LAYER + r"self_attn\.o_proj\.kernel", P(None, "fsdp", None), why="(K, H*hd, Dd): heads"),
    Rule(r"depth\." + _LAYER + r"mlp\.fc1\.kernel", P(None, None, "fsdp"), why="(K, Dd, F): F"),
    Rule(r"depth\." + _LAYER + r"mlp\.fc2\.kernel", P(None, "fsdp", None), why="(K, F/2, Dd): F/2"),
    Rule(r"depth\." + _LAYER + r"(input|post_attention)_layernorm\.weight", P(None), why="norm: replicated"),
    Rule(r"depth\.lm_heads\.kernel", P(None, None, "fsdp"), why="(K, Dd, card): vocabulary"),
    Rule(r"depth\.out_norms\.\d+\.(weight|bias)", P(None), why="norm: replicated"),
    Rule(r"(depth\.)?" + _LAYER + r"(self_attn|mlp)_layer_scale\.scale", P(None), why="layer scale (D,): replicated"),
    # LoRA adapters (models_flax/training/lora.py): A (in, r) split like its kernel's input, B (r, out) like its output
    # (the fused q/k/v adapter's output is [q; k; v]); a per-codebook adapter keeps its leading axis replicated.
    Rule(r"(?!depth\.).+\.(qkv_)?lora\.a", P("fsdp", None), why="LoRA A (in, r): in"),
    Rule(r"(?!depth\.).+\.(qkv_)?lora\.b", P(None, "fsdp"), why="LoRA B (r, out): out"),
    Rule(r"depth\..+\.(qkv_)?lora\.a", P(None, "fsdp", None), why="LoRA A (K, in, r): in"),
    Rule(r"depth\..+\.(qkv_)?lora\.b", P(None, None, "fsdp"), why="LoRA B (K, r, out): out"),
)


def make_mesh(dp: int, fsdp: int, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('dp', 'fsdp') mesh over exactly dp * fsdp devices (default: all of `jax.devices()`), axes in Auto mode."""
    devices = list(jax.devices() if devices is None else devices)
    if dp < 1 or fsdp < 1 or dp * fsdp != len(devices):
        raise ValueError(f"make_mesh: dp * fsdp must equal the device count {len(devices)}, got dp={dp}, fsdp={fsdp}")
    return jax.make_mesh((dp, fsdp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def abstract_mesh(dp: int, fsdp: int) -> AbstractMesh:
    """A device-free ('dp', 'fsdp') mesh for planning (`param_specs`, `describe`) on any host."""
    if dp < 1 or fsdp < 1:
        raise ValueError(f"abstract_mesh: dp and fsdp must be >= 1, got dp={dp}, fsdp={fsdp}")
    return AbstractMesh((dp, fsdp), AXES, axis_types=(AxisType.Auto,) * 2)


def _axis_sizes(mesh: Mesh | AbstractMesh | Mapping[str, int]) -> dict[str, int]:
    return dict(mesh.shape) if isinstance(mesh, Mesh | AbstractMesh) else dict(mesh)


def _params(model: nnx.Module | nnx.State) -> nnx.State:
    return model if isinstance(model, nnx.State) else nnx.state(model, nnx.Param)


def _path(parts: tuple) -> str:
    return ".".join(str(p) for p in parts)


def _lines(items: list[str]) -> str:
    return "".join(f"\n  {item}" for item in items)


def _resolve(name: str, shape: tuple[int, ...], rule: Rule, sizes: dict[str, int], errors: list[str]) -> P:
    """The rule's spec for this parameter, checked against its rank and the mesh; problems are appended to errors."""
    if len(rule.spec) != len(shape):
        errors.append(f"{name}: shape {shape} has rank {len(shape)}, rule {rule.pattern} gives spec {rule.spec}")
        return rule.spec
    entries = []
    for dim, entry in zip(shape, rule.spec, strict=True):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        unknown = [a for a in axes if a not in sizes]
        if unknown:
            errors.append(f"{name}: rule {rule.pattern} names mesh axes {unknown}; the mesh has {sorted(sizes)}")
            entries.append(entry)
            continue
        size = math.prod(sizes[a] for a in axes)
        if dim % size:
            if rule.replicate_if_indivisible:
                entries.append(None)
                continue
            errors.append(
                f"{name}: shape {shape}, dimension {dim} is not divisible by mesh axis {entry} of size {size}"
            )
        entries.append(entry)
    return P(*entries)


def param_specs(
    model: nnx.Module | nnx.State, mesh: Mesh | AbstractMesh | Mapping[str, int], *, rules: Sequence[Rule] = RULES
) -> nnx.State:
    """The PartitionSpec of every nnx.Param, as an nnx.State shaped like `nnx.state(model, nnx.Param)`.

    Args:
        model: the LM (concrete or from `nnx.eval_shape`), or its Param state.
        mesh: a Mesh, an AbstractMesh, or a mapping axis name -> size: only the axis sizes are read.
        rules: the table; every parameter must match exactly one rule.

    Raises:
        ValueError: listing every unmatched or multiply matched path, every rank mismatch, unknown axis and
            indivisible dimension (with the path, shape and axis size), all at once.
    """
    sizes = _axis_sizes(mesh)
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    unmatched, ambiguous, errors, flat = [], [], [], []
    for parts, variable in nnx.to_flat_state(_params(model)):
        name = _path(parts)
        hits = [rule for regex, rule in compiled if regex.fullmatch(name)]
        if not hits:
            unmatched.append(name)
            continue
        shape = tuple(variable.get_value().shape)
        if len(hits) > 1:  # a path two stacks share (a depth layer's kernel): the rule of the parameter's rank
            hits = [rule for rule in hits if len(rule.spec) == len(shape)] or hits
        if len(hits) > 1:
            ambiguous.append(f"{name} matches " + ", ".join(r.pattern for r in hits))
            continue
        flat.append((parts, variable.replace(_resolve(name, shape, hits[0], sizes, errors))))
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} parameter(s) match no sharding rule:" + _lines(unmatched))
    if ambiguous:
        problems.append(f"{len(ambiguous)} parameter(s) match more than one rule:" + _lines(ambiguous))
    if errors:
        problems.append(f"{len(errors)} spec error(s) on mesh {sizes}:" + _lines(errors))
    if problems:
        raise ValueError("param_specs: " + "\n".join(problems))
    return nnx.from_flat_state(flat)


def param_shardings(
    model: nnx.Module | nnx.State, mesh: Mesh | AbstractMesh, *, rules: Sequence[Rule] = RULES
) -> nnx.State:
    """The NamedSharding of every nnx.Param on `mesh` by the rules, shaped like `nnx.state(model, nnx.Param)`
    (`param_specs` on the mesh itself). Raises as `param_specs`."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(model, mesh, rules=rules))


def shard_model(model: nnx.Module, mesh: Mesh, *, rules: Sequence[Rule] = RULES) -> nnx.Module:
    """Places every nnx.Param of `model` on `mesh` by the rules (in place, via nnx.update); returns the model."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules=rules)))
    return model


def init_on_mesh(make: Callable[[], nnx.Module], mesh: Mesh, *, rules: Sequence[Rule] = RULES) -> nnx.Module:
    """`make()`, a constructor that draws random weights (`lambda: LM(cfg, rngs=nnx.Rngs(seed))`), compiled with each
    parameter's output on its shards by the rules: every device draws only its own shards, so no device ever holds the
    whole model (a random 7B on 16 GB chips). With jax's partitionable threefry (the default) the weights are bit for
    bit the ones `nnx.jit(make)()` draws on one device (an eager `make()` differs from both by an ulp in most kernels:
    compiled, XLA fuses the initializers' scaling). State other than parameters is replicated.

    Raises:
        As `param_specs`, before anything is drawn.
    """
    abstract = nnx.eval_shape(make)
    graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
    params = param_shardings(abstract, mesh, rules=rules)

    def draw() -> tuple[nnx.State, nnx.State]:
        _, drawn, rest = nnx.split(make(), nnx.Param, ...)
        return drawn, rest

    drawn, rest = jax.jit(draw, out_shardings=(params, NamedSharding(mesh, P())))()
    return nnx.merge(graphdef, drawn, rest)


def placer(model: nnx.Module, mesh: Mesh, *, rules: Sequence[Rule] = RULES) -> Callable[[str, Any], jax.Array]:
    """(key, host array) -> the array on its shards of `mesh` by the rules, for `converters.load_flax(place=)`: a loader
    puts each parameter of `model` (abstract: `nnx.eval_shape`) from the host straight onto its shards, so no device
    ever holds the whole model. Keys are '.'-joined nnx paths, as `converters.flax_state` writes them.

    Raises:
        As `param_specs`, before anything is placed.
    """
    placed = {_path(parts): s.get_value() for parts, s in nnx.to_flat_state(param_shardings(model, mesh, rules=rules))}
    return lambda key, array: jax.device_put(array, placed[key])


def shard_batch(x: jax.Array | np.ndarray, mesh: Mesh, *, spec: P = DATA_SPEC) -> jax.Array:
    """Places a batch-leading array (codes (B, 1 + n_q, T)) on `mesh`: B over `spec[0]`, the rest replicated.

    The default `DATA_SPEC` splits B over 'dp' and 'fsdp' together (FSDP: no two devices compute the same rows), so B
    must be a multiple of the device count; `spec=P("dp")` splits B over 'dp' only (the fsdp devices of a group share
    rows and XLA splits their matmuls along the weights' sharded axes), for batches smaller than the mesh.
    """
    sizes = _axis_sizes(mesh)
    entry = spec[0] if len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    size = math.prod(sizes[a] for a in axes)
    if x.ndim < 1 or x.shape[0] % size:
        raise ValueError(f"shard_batch: batch dimension of shape {tuple(x.shape)} is not divisible by {entry} = {size}")
    return jax.device_put(x, NamedSharding(mesh, spec))


@dataclasses.dataclass(frozen=True)
class Placement:
    """One parameter in the plan: its global shape and dtype, spec, and bytes in total and on each device."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    spec: P
    bytes: int
    bytes_per_device: int


def describe(
    model: nnx.Module | nnx.State, mesh: Mesh | AbstractMesh | Mapping[str, int], *, rules: Sequence[Rule] = RULES
) -> list[Placement]:
    """The placement of every parameter (works on `nnx.eval_shape` models and abstract meshes: nothing is allocated)."""
    sizes = _axis_sizes(mesh)
    specs = dict(nnx.to_flat_state(param_specs(model, sizes, rules=rules)))
    out = []
    for parts, variable in nnx.to_flat_state(_params(model)):
        value, spec = variable.get_value(), specs[parts].get_value()
        shape, itemsize = tuple(value.shape), np.dtype(value.dtype).itemsize
        local = list(shape)
        for d, entry in enumerate(spec):
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            local[d] //= math.prod(sizes[a] for a in axes)
        out.append(
            Placement(
                path=_path(parts),
                shape=shape,
                dtype=str(np.dtype(value.dtype)),
                spec=spec,
                bytes=math.prod(shape) * itemsize,
                bytes_per_device=math.prod(local) * itemsize,
            )
        )
    return out


def totals(placements: Sequence[Placement]) -> tuple[int, int]:
    """(total parameter bytes, parameter bytes on each device)."""
    return sum(p.bytes for p in placements), sum(p.bytes_per_device for p in placements)
