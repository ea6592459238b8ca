"""The Moshi LM: temporal transformer over frames, inner-monologue text head, depth transformer over codebooks.

Mirrors models_ref/lm.py name for name; the call takes codes shaped like kyutai `LMModel.forward`: (B, 1 + n_q, T).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import AbstractMesh, Mesh

from models_flax.cache import HeadSplit, KVCache
from models_flax.checks import check_ids, check_int_array
from models_flax.delays import delay, undelay
from models_flax.embedding import Embedding
from models_flax.layer import DecoderLayer
from models_flax.linear import FlexibleLinear, Linear
from models_flax.norm import make_norm
from models_flax.sin_embedding import add_sin_embedding
from moshi_spec import LMConfig


@struct.dataclass
class LMOutput:
    text_logits: jax.Array  # (B, 1, T, text_out), NaN where invalid
    text_mask: jax.Array  # (B, 1, T)
    audio_logits: jax.Array  # (B, dep_q, T, card), NaN where invalid
    audio_mask: jax.Array  # (B, dep_q, T)
    # (B, extra_heads, T, extra_heads_dim): kyutai's extra heads on the normed temporal output of step t (the step
    # whose text logits are the text stream's at t + delays[0]), no delay undone, no mask; None without extra heads
    extra_logits: jax.Array | None = None


def run_layers(
    layers: nnx.List, x: jax.Array, positions: jax.Array, *, remat: bool, layer_idx: np.ndarray | None = None
) -> jax.Array:
    """x through every layer (no cache); with remat, each layer's activations are recomputed in the backward pass.
    layer_idx: a flexible stack's weight set per position (a concrete array), None for position i's set i."""
    for layer in layers:
        if remat:
            x = _remat_layer(layer, x, positions, layer_idx)
        else:
            x = layer(x, positions=positions, layer_idx=layer_idx)[0]
    return x


def _remat_layer(layer: DecoderLayer, x: jax.Array, positions: jax.Array, layer_idx: np.ndarray | None) -> jax.Array:
    """`jax.checkpoint` of the layer as a pure function of its state (nnx.remat would write the state back, which
    fails when the model was merged inside an outer transform such as the train step's scan)."""
    graphdef, state = nnx.split(layer)

    def run(state: nnx.State, x: jax.Array, positions: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(x, positions=positions, layer_idx=layer_idx)[0]

    return jax.checkpoint(run)(state, x, positions)


DEPTH_STACKS = ("input_projections", "layers", "lm_heads")
"""The depth transformer's members holding per-codebook (FlexibleLinear) kernels; `layers` only when cfg.depth is
flexible."""


class DepthTransformer(nnx.Module):
    """Predicts the dep_q audio codebooks of one frame from the temporal state, one codebook per step."""

    def __init__(
        self, cfg: LMConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, precision=None, impl="xla", rngs: nnx.Rngs
    ):
        d = cfg.depth
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        emb = dict(kw, norm=cfg.norm_emb, low_rank=cfg.depth_low_rank)
        self.text_embed_tokens = Embedding(cfg.text_card + 1, d.dim, **emb, demux=cfg.demux_second_text_stream)
        self.embed_tokens = nnx.List([Embedding(cfg.card + 1, d.dim, **emb) for _ in range(cfg.dep_q - 1)])
        # one projection per weight set (kyutai's depformer_in), codebook c using cfg.depth_in_sets[c]
        self.input_projections = FlexibleLinear(cfg.temporal.dim, d.dim, cfg.depth_in_count, **kw)
        self.layers = nnx.List([DecoderLayer(d, impl=impl, **kw) for _ in range(d.num_layers)])
        self.lm_heads = FlexibleLinear(d.dim, cfg.card, cfg.dep_q, **kw, bias=cfg.bias_proj)
        # kyutai's depformer_norms: one norm per codebook on the output, before its head (absent by default)
        n, norm_kw = cfg.depth_out_norm, dict(dtype=dtype, param_dtype=param_dtype)
        self.out_norms = None if n is None else nnx.List([make_norm(n, **norm_kw) for _ in range(cfg.dep_q)])
        self.remat = False  # recompute each layer's activations in the backward pass (`set_remat`)

    def __call__(self, tokens: jax.Array, *, context: jax.Array) -> jax.Array:
        """tokens (N, dep_q): the text token, then audio tokens 0..dep_q-2 (teacher forcing); context (N, D).

        Returns (N, dep_q, card) logits.
        """
        n, steps = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(steps), (n, steps))
        x = self.stack_input(self.embed(tokens, context=context), positions)
        sets = self.cfg.depth_sets  # codebook c's weight set (None: one set shared by every step)
        scheduled = sets is not None and sets[:steps] != tuple(range(steps))
        layer_idx = np.asarray(sets[:steps], np.int32) if scheduled else None  # None: step i uses set i
        x = run_layers(self.layers, x, positions, remat=self.remat, layer_idx=layer_idx)
        return self.lm_heads(self.out_norm(x))

    def out_norm(self, x: jax.Array, *, first: int = 0) -> jax.Array:
        """x (N, S, D), step s the output for codebook first + s, through that codebook's output norm (if any)."""
        if self.out_norms is None:
            return x
        return jnp.concatenate([self.out_norms[first + s](x[:, s : s + 1]) for s in range(x.shape[1])], axis=1)

    def embed(self, tokens: jax.Array, *, context: jax.Array) -> jax.Array:
        """The first layer's input (N, dep_q, D): each step's token embedding plus its projection of the context."""
        steps = tokens.shape[1]
        embeds = [self.text_embed_tokens(tokens[:, 0])]
        embeds += [self.embed_tokens[c - 1](tokens[:, c]) for c in range(1, steps)]
        x = jnp.stack(embeds, axis=1)
        in_sets = np.asarray(self.cfg.depth_in_sets[:steps], np.int32)
        return x + self.input_projections(context[:, None], layer_idx=in_sets)

    def stack_input(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """The first layer's input: the embeddings x (N, S, D) at positions (N, S), plus the sinusoidal embedding
        when the depth stack has one (kyutai's depformer_pos_emb "sin"))."""
        return add_sin_embedding(self.cfg.depth, x, positions)

    def init_caches(self, batch: int, *, dtype: object, mesh: Mesh | AbstractMesh | None = None) -> list[KVCache]:
        """One frame's caches: dep_q slots per layer (the depth transformer restarts at every frame); on a mesh, split
        by kv heads where 'fsdp' divides them (`HeadSplit.for_heads`)."""
        d = self.cfg.depth
        split = None if mesh is None else HeadSplit.for_heads(mesh, d.num_kv_heads)
        return [KVCache.init(batch, self.cfg.dep_q, d.num_kv_heads, d.head_dim, dtype=dtype, split=split)
                for _ in self.layers]  # fmt: skip

    def step(
        self,
        token: jax.Array,
        *,
        context: jax.Array,
        codebook: int,
        caches: list[KVCache],
        weight_set: int | None = None,
    ) -> tuple[jax.Array, list[KVCache]]:
        """One streaming step: token (N,) is the text token (codebook 0) or audio token codebook-1; context (N, D).

        weight_set: None: each per-codebook stack uses `codebook`'s own weight set (`weight_sets(codebook)`); 0 when
        the caller has loaded this codebook's slices alone (models_flax.streaming does, so that no step copies a
        weight slice).

        Returns (N, card) logits for `codebook` and the updated caches; equals row `codebook` of `__call__` given the
        same earlier tokens.
        """
        sets = self.weight_sets(codebook) if weight_set is None else dict.fromkeys(DEPTH_STACKS, weight_set)
        embed = self.text_embed_tokens if codebook == 0 else self.embed_tokens[codebook - 1]
        positions = jnp.full((token.shape[0], 1), codebook, jnp.int32)
        x = embed(token[:, None]) + self.input_projections(context[:, None], layer_idx=sets["input_projections"])
        x = self.stack_input(x, positions)
        layer_idx = None if self.cfg.depth_sets is None else sets["layers"]  # not flexible: one shared set
        new_caches = []
        for layer, cache in zip(self.layers, caches, strict=True):
            x, cache = layer(x, positions=positions, layer_idx=layer_idx, cache=cache)
            new_caches.append(cache)
        return self.lm_heads(self.out_norm(x, first=codebook), layer_idx=sets["lm_heads"])[:, 0], new_caches

    def weight_sets(self, codebook: int) -> dict[str, int]:
        """Which weight set of each per-codebook stack (DEPTH_STACKS) codebook `codebook` uses: its input projection
        (cfg.depth_in_sets), its layers' set (cfg.depth_sets; 0 for a stack shared by every step), its own head."""
        sets = self.cfg.depth_sets
        return {
            "input_projections": self.cfg.depth_in_sets[codebook],
            "layers": 0 if sets is None else sets[codebook],
            "lm_heads": codebook,
        }


class LM(nnx.Module):
    """impl: "xla" or "pallas" (the flash-attention kernel) for every attention of both transformers."""

    def __init__(
        self, cfg: LMConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, precision=None, impl="xla", rngs: nnx.Rngs
    ):
        t = cfg.temporal
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        demux = dict(demux=cfg.demux_second_text_stream, precision=precision)
        self.embed_tokens = nnx.List([Embedding(cfg.card + 1, t.dim, **kw, norm=cfg.norm_emb) for _ in range(cfg.n_q)])
        self.text_embed_tokens = Embedding(cfg.text_card + 1, t.dim, **kw, norm=cfg.norm_emb, **demux)
        kw |= {"precision": precision}
        self.layers = nnx.List([DecoderLayer(t, impl=impl, **kw) for _ in range(t.num_layers)])
        self.norm = make_norm(t, dtype=dtype, param_dtype=param_dtype)
        self.lm_head = Linear(t.dim, cfg.text_out, **kw, bias=cfg.bias_proj)
        self.extra_heads = nnx.List([Linear(t.dim, cfg.extra_heads_dim, **kw) for _ in range(cfg.extra_heads)])
        self.depth = DepthTransformer(cfg, impl=impl, **kw)
        self.remat = False  # recompute each layer's activations in the backward pass (`set_remat`)

    def set_remat(self, remat: bool) -> None:
        """Activation checkpointing of every decoder layer of both transformers in the full-sequence call (training):
        the backward pass recomputes a layer's activations instead of storing them. Same values, less memory."""
        self.remat = self.depth.remat = bool(remat)

    @property
    def dtype(self) -> jnp.dtype:
        """The computation dtype (activations, KV caches)."""
        return self.text_embed_tokens.dtype

    def initial_tokens(self) -> jax.Array:
        return jnp.asarray([self.cfg.initial_text_token] + [self.cfg.initial_audio_token] * self.cfg.n_q, jnp.int32)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """tokens (B, 1 + n_q, T) -> (B, T, D): sum of the audio embeddings, then + the text's (kyutai's order)."""
        x = self.embed_tokens[0](tokens[:, 1])
        for k in range(1, self.cfg.n_q):
            x = x + self.embed_tokens[k](tokens[:, 1 + k])
        return x + self.text_embed_tokens(tokens[:, 0])

    def stack_input(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """The first layer's input: the embeddings x (B, T, D) at positions (B, T), plus the sinusoidal embedding when
        the temporal stack has one (kyutai's positional_embedding "sin" or "sin_rope")."""
        return add_sin_embedding(self.cfg.temporal, x, positions)

    def check_codes(self, codes: jax.Array | np.ndarray) -> jax.Array:
        """codes (B, 1 + n_q, T), B and T >= 1, integers: text ids (stream 0) in [0, text_vocab) (text_card, or the
        muxed pairs with demux_second_text_stream), audio ids in [0, card), or -1 (the zero token) -> int32 codes.
        Bad codes raise (TypeError, ValueError) when concrete; traced out-of-range codes raise under `checked_jit`
        (models_flax.checks) and make the outputs they feed NaN."""
        cfg = self.cfg
        layout = f"(B, 1 + n_q = {1 + cfg.n_q}, T)"
        check_int_array("LM", "codes", codes, layout)
        if codes.ndim != 3 or codes.shape[1] != 1 + cfg.n_q or codes.shape[0] < 1 or codes.shape[2] < 1:
            raise ValueError(f"LM: codes must be {layout} with B >= 1 and T >= 1, got shape {tuple(codes.shape)}")
        text = check_ids("LM", "codes[:, 0]: text ids", codes[:, :1], vocab=cfg.text_vocab)
        audio = check_ids("LM", "codes[:, 1:]: audio ids", codes[:, 1:], vocab=cfg.card, offset=(0, 1, 0))
        return jnp.concatenate([text, audio], axis=1)

    def __call__(self, codes: jax.Array | np.ndarray) -> LMOutput:
        """codes (B, 1 + n_q, T), text first (see `check_codes`); logits are aligned with the codes they predict."""
        cfg = self.cfg
        codes = self.check_codes(codes)
        batch, _, length = codes.shape
        initial = self.initial_tokens()
        first = jnp.broadcast_to(initial[None, :, None], (batch, initial.shape[0], 1))
        delayed = jnp.concatenate([first, delay(codes, cfg.delays, initial)], axis=2)
        inputs, targets = delayed[:, :, :-1], delayed[:, :, 1:]
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        x = self.stack_input(self.embed(inputs), positions)
        x = run_layers(self.layers, x, positions, remat=self.remat)
        x = self.norm(x)
        text_logits = self.lm_head(x)[:, None]
        extra = jnp.stack([head(x) for head in self.extra_heads], axis=1) if len(self.extra_heads) else None
        depth_tokens = targets[:, : cfg.dep_q].transpose(0, 2, 1).reshape(batch * length, cfg.dep_q)
        audio = self.depth(depth_tokens, context=x.reshape(batch * length, -1))
        audio = audio.reshape(batch, length, cfg.dep_q, -1).transpose(0, 2, 1, 3)
        audio_logits, audio_mask = undelay(audio, cfg.delays[1 : 1 + cfg.dep_q])
        text_logits, text_mask = undelay(text_logits, cfg.delays[:1])
        audio_mask = audio_mask & (codes[:, 1 : 1 + cfg.dep_q] != -1)
        text_mask = text_mask & (codes[:, :1] != -1)
        return LMOutput(text_logits, text_mask, audio_logits, audio_mask, extra)
