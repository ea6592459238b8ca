"""Streaming generation: kyutai `LMGen` as explicit data and one jitted step, plus an offline generate loop.

Every frame (80 ms) the model reads the user's n_q - dep_q audio codes and emits one text token and dep_q audio codes:

    streamer = Streamer(lm)                      # any models_flax LM (fp32/bf16, impl "xla" or "pallas")
    state = streamer.init_state(batch=1)         # temporal KV ring caches (capacity = context), delay buffer, offsets
    out, state = streamer.step(state, user_codes, key)   # user_codes (B, n_q - dep_q); use the returned state
    out.tokens                                   # (B, 1 + dep_q): text + audio of frame step - max_delay, undelayed

    gen, state = streamer.generate(user_codes_bt, key)   # (B, n_q - dep_q, T): T steps in one jax.lax.scan

The step is kyutai `LMGen._step` (moshi 0.2.13) line for line, on arrays:
1. the user's codes are written into the delay buffer at slot (offset + delay_k) % width, width = max_delay + 2;
2. the temporal input is the buffer at slot offset % width, or stream k's initial token while offset <= delay_k;
3. the temporal transformer runs one position (offset) against its KV ring caches; the normed output gives the text
   logits, and the depth transformer runs dep_q steps (text token first, then each sampled audio token) with caches that
   restart at every frame;
4. offset += 1, the sampled text and audio are written at slot offset % width, and the output is the buffer read back
   with the model streams' delays undone (UNGENERATED while offset <= max_delay).
Sampling (models_flax.sampling) follows kyutai's sample_token; temperature 0 is greedy. Host-side checks reject codes of
the wrong shape or dtype, out-of-range codes and a batch other than the state's before anything runs (inside the
compiled step every code is then in range: it was checked, or sampled from the logits).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models_flax import sharding
from models_flax.cache import HeadSplit, KVCache
from models_flax.checks import check_ids, check_int_array
from models_flax.lm import DEPTH_STACKS, LM
from models_flax.sampling import AUDIO, TEXT, Sampler, sample

UNGENERATED = -2  # kyutai LMModel.ungenerated_token_id: a buffer slot not written yet


@struct.dataclass
class StreamState:
    """Everything a stream carries between frames (a pytree; `Streamer.step` consumes it).

    Attributes:
        caches: temporal KV ring caches, one per layer, head-major (B, Hkv, capacity, D) each; positions -1 where empty.
        tokens: (B, 1 + n_q, max_delay + 2) int32 delay buffer, slot = frame % width, UNGENERATED where unwritten.
        offsets: (B,) int32 frames stepped so far (the temporal position of the next step).
    """

    caches: list[KVCache]
    tokens: jax.Array
    offsets: jax.Array

    @property
    def batch(self) -> int:
        return self.offsets.shape[0]


@struct.dataclass
class StepOutput:
    """One step's results (stacked along a trailing time axis by `Streamer.generate`).

    Attributes:
        tokens: (B, 1 + dep_q) text and audio of frame `offset - max_delay` with the delays undone (kyutai
            `LMGen.step`'s output), UNGENERATED during the first max_delay steps.
        text: (B,) the text token sampled at this step.
        audio: (B, dep_q) the audio tokens sampled at this step (codebook c belongs to frame step - delays[1 + c]).
        text_logits: (B, text_out) float32, the logits `text` was sampled from.
        audio_logits: (B, dep_q, card) float32, the logits `audio` was sampled from.
        extra_heads: (B, extra_heads, extra_heads_dim) float32, the softmax of each extra head on this step's normed
            temporal output (kyutai `LMGen.step_with_extra_heads`, which returns them from step max_delay on); None
            without extra heads.
    """

    tokens: jax.Array
    text: jax.Array
    audio: jax.Array
    text_logits: jax.Array
    audio_logits: jax.Array
    extra_heads: jax.Array | None = None


def write_user_codes(tokens: jax.Array, codes: jax.Array, offsets: jax.Array, delays: jax.Array) -> jax.Array:
    """Writes the user's codes (B, U), streams K - U .. K - 1, at slot (offset + delay) % width."""
    batch, streams, width = tokens.shape
    index = jnp.arange(streams - codes.shape[1], streams)
    slots = (offsets[:, None] + delays[index][None]) % width
    return tokens.at[jnp.arange(batch)[:, None], index[None], slots].set(codes.astype(tokens.dtype))


def read_inputs(tokens: jax.Array, offsets: jax.Array, delays: jax.Array, initial: jax.Array) -> jax.Array:
    """(B, K) temporal input: slot offset % width, stream k's initial token while offset <= delays[k]."""
    batch, _, width = tokens.shape
    values = tokens[jnp.arange(batch), :, offsets % width]
    return jnp.where(offsets[:, None] <= delays[None], initial[None].astype(tokens.dtype), values)


def write_generated(tokens: jax.Array, generated: jax.Array, offsets: jax.Array) -> jax.Array:
    """Writes the sampled text + audio (B, 1 + dep_q), streams 0..dep_q, at slot offset % width (offset already +1)."""
    batch, _, width = tokens.shape
    index = jnp.arange(generated.shape[1])
    slots = jnp.broadcast_to((offsets % width)[:, None], generated.shape)
    return tokens.at[jnp.arange(batch)[:, None], index[None], slots].set(generated.astype(tokens.dtype))


def read_outputs(tokens: jax.Array, offsets: jax.Array, delays: jax.Array) -> jax.Array:
    """(B, 1 + dep_q) model streams of frame offset - max_delay, delays undone; UNGENERATED until offset > max_delay."""
    batch, _, width = tokens.shape
    max_delay = width - 2
    slots = (offsets[:, None] - max_delay + delays[None]) % width
    out = tokens[jnp.arange(batch)[:, None], jnp.arange(delays.shape[0])[None], slots]
    return jnp.where(offsets[:, None] <= max_delay, UNGENERATED, out)


def is_depth_weight(path: tuple, value) -> bool:
    """nnx filter: the depth transformer's per-codebook weights: the FlexibleLinear kernels (sets, in, out) of its input
    projections, heads and a flexible stack's layers, and the heads' biases (dep_q, card) (kyutai's bias_proj); not a
    shared stack's (in, out) kernels, a low-rank embedding's projection nor the demux linears of its text embedding."""
    if path[0] != "depth" or path[1] not in DEPTH_STACKS:
        return False
    return (path[-1] == "kernel" and len(value.shape) == 3) or tuple(path[1:]) == ("lm_heads", "bias")


def split_codebooks(lm: LM):
    """(graphdef, per-codebook depth kernels [dep_q states of (1, in, out) slices], every other parameter).

    A depth step uses one weight set of each stacked kernel (`DepthTransformer.weight_sets`: with kyutai's schedule
    or a shared input projection, several codebooks read the same set); slicing it inside the step makes XLA copy
    the slice every frame (measured on CPU: 16 slices of 2-4 MB cost 37 ms against 2.4 ms of reading them). The
    slices are made once.
    """
    graphdef, stacked, rest = nnx.split(lm, is_depth_weight, ...)

    def slices(codebook: int) -> nnx.State:
        sets = lm.depth.weight_sets(codebook)
        return jax.tree_util.tree_map_with_path(lambda path, w: w[sets[path[1].key] : sets[path[1].key] + 1], stacked)

    return graphdef, [slices(c) for c in range(lm.cfg.dep_q)], rest


def forget_rows(caches: list[KVCache], rows: jax.Array) -> list[KVCache]:
    """Marks every slot of the (B,) bool `rows` empty (position -1): their keys are never visible again."""
    return [c.replace(positions=jnp.where(rows[:, None], -1, c.positions)) for c in caches]


def _step(
    graphdef,
    text_sampler: Sampler,
    audio_sampler: Sampler,
    mesh: Mesh | AbstractMesh | None,
    params,
    depth_weights,
    state: StreamState,
    codes: jax.Array,
    key,
) -> tuple[StepOutput, StreamState]:
    lm = nnx.merge(graphdef, depth_weights[0], params)
    cfg = lm.cfg
    batch = codes.shape[0]
    delays = jnp.asarray(cfg.delays, jnp.int32)
    tokens = write_user_codes(state.tokens, codes, state.offsets, delays)
    inputs = read_inputs(tokens, state.offsets, delays, lm.initial_tokens())
    positions = state.offsets[:, None]
    x = lm.stack_input(lm.embed(inputs[:, :, None]), positions)
    caches = []
    for layer, cache in zip(lm.layers, state.caches, strict=True):
        x, cache = layer(x, positions=positions, cache=cache)
        caches.append(cache)
    x = lm.norm(x)[:, 0]
    text_logits = lm.lm_head(x).astype(jnp.float32)
    extra = [jax.nn.softmax(head(x), axis=-1).astype(jnp.float32) for head in lm.extra_heads]
    keys = jax.random.split(key, 1 + cfg.dep_q)
    text = sample(text_logits, keys[0], text_sampler)
    token, depth_caches = text, lm.depth.init_caches(batch, dtype=lm.dtype, mesh=mesh)
    audio, audio_logits = [], []
    for codebook in range(cfg.dep_q):
        depth = nnx.merge(graphdef, depth_weights[codebook], params).depth  # this codebook's weight slices
        logits, depth_caches = depth.step(token, context=x, codebook=codebook, caches=depth_caches, weight_set=0)
        logits = logits.astype(jnp.float32)
        token = sample(logits, keys[1 + codebook], audio_sampler)
        audio.append(token)
        audio_logits.append(logits)
    audio = jnp.stack(audio, axis=1)
    offsets = state.offsets + 1
    tokens = write_generated(tokens, jnp.concatenate([text[:, None], audio], axis=1), offsets)
    out = StepOutput(
        tokens=read_outputs(tokens, offsets, delays[: 1 + cfg.dep_q]),
        text=text,
        audio=audio,
        text_logits=text_logits,
        audio_logits=jnp.stack(audio_logits, axis=1),
        extra_heads=jnp.stack(extra, axis=1) if extra else None,
    )
    return out, StreamState(caches, tokens, offsets)


def _step_reading(graphdef, text_sampler, audio_sampler, mesh, params, depth_weights, state, codes, key):
    """The jitted step: reads the caches, returns (output, their pending entries, delay buffer, offsets), never the
    caches themselves (`_commit`, a second program, writes the entries in place)."""
    out, new = _step(graphdef, text_sampler, audio_sampler, mesh, params, depth_weights, state, codes, key)
    return out, [c.pending for c in new.caches], new.tokens, new.offsets


def _commit(caches: list[KVCache], pending: list[tuple]) -> list[KVCache]:
    return [c.replace(pending=p).commit() for c, p in zip(caches, pending, strict=True)]


def _generate(graphdef, text_sampler, audio_sampler, mesh, params, depth_weights, state, codes, keys):
    """codes (B, U, T), keys (T, ...) -> StepOutput with a trailing time axis, final state."""

    def body(state, inputs):
        codes_t, key = inputs
        out, new = _step(graphdef, text_sampler, audio_sampler, mesh, params, depth_weights, state, codes_t, key)
        return new.replace(caches=[c.commit() for c in new.caches]), out  # a loop carry updates in place

    state, outs = jax.lax.scan(body, state, (jnp.moveaxis(codes, 2, 0), keys))
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), outs), state


def state_shardings(mesh: Mesh | AbstractMesh, state: StreamState) -> StreamState:
    """Where `Streamer(mesh=)` keeps a stream's state: each cache's keys and values as its `split` says (by kv heads
    over 'fsdp', or whole where the heads do not divide it: `init_state`), everything else replicated; shaped like
    `state`."""
    whole = NamedSharding(mesh, P())

    def placed(cache: KVCache) -> KVCache:
        kv = whole if cache.split is None else cache.split.sharding
        return cache.replace(keys=kv, values=kv, positions=whole)

    return StreamState([placed(c) for c in state.caches], whole, whole)


class Streamer:
    """Jitted streaming step and generate loop of one models_flax LM with fixed samplers.

    Args:
        lm: the LM (its parameters are read once, here; the depth kernels are re-laid out per codebook, a copy).
        text, audio: samplers (kyutai's defaults: 0.7 / top 25 for text, 0.8 / top 250 for audio; GREEDY for argmax).

    `step` runs two programs: the step, which only reads the caches, and a commit that writes the step's new keys
    and values into them in place (donated). The state passed to `step` or `generate` is consumed.

    mesh: a ('dp', 'fsdp') mesh (models_flax.sharding.make_mesh) to stream on several devices: the LM's parameters
    are placed by the sharding rules (in place; a no-op for ones `from_checkpoint(mesh=)` placed), so each device
    holds 1/fsdp of the weights and XLA splits the matmuls along them; the KV caches are split by kv heads over
    'fsdp' (replicated where the heads do not divide), the rest of the state is replicated; every state a Streamer
    returns is placed so, and the step compiles once. With attention "pallas" the kernels run per device on the
    caches' heads (`KVCache.split`: a shard_map, as XLA cannot partition a Pallas call), the depth transformer's
    likewise (whole on every device where 'fsdp' does not divide its kv heads).
    """

    def __init__(self, lm: LM, *, text: Sampler = TEXT, audio: Sampler = AUDIO, mesh: Mesh | None = None):
        if not isinstance(lm, LM):
            raise TypeError(f"Streamer: expected a models_flax LM, got {type(lm).__name__}")
        for name, sampler in (("text", text), ("audio", audio)):
            if not isinstance(sampler, Sampler):
                raise TypeError(f"Streamer: {name} must be a Sampler, got {sampler!r}")
        rows = lm.text_embed_tokens.vocab
        if lm.cfg.text_out > rows:  # kyutai's LMGen would raise an IndexError embedding it
            raise ValueError(
                f"Streamer: the text head has {lm.cfg.text_out} outputs (text_card_out) but the text embedding takes "
                f"{rows} ids: a sampled text token could not be fed back (demux_second_text_stream takes more)"
            )
        self.cfg = lm.cfg
        self.dtype = lm.dtype
        self.samplers = (text, audio)
        self.mesh = mesh
        if mesh is not None:
            sharding.shard_model(lm, mesh)
        graphdef, self.depth_weights, self.params = split_codebooks(lm)
        self._step = jax.jit(functools.partial(_step_reading, graphdef, text, audio, mesh))
        self._commit = jax.jit(_commit, donate_argnums=0)
        self._generate = jax.jit(functools.partial(_generate, graphdef, text, audio, mesh), donate_argnums=2)

    @property
    def user_streams(self) -> int:
        return self.cfg.n_q - self.cfg.dep_q

    def init_state(self, batch: int, *, capacity: int | None = None) -> StreamState:
        """A fresh stream. capacity: temporal cache slots, default the context (needed when the context is None)."""
        cfg = self.cfg
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"Streamer.init_state: batch must be a positive int, got {batch!r}")
        context = cfg.temporal.context
        capacity = context if capacity is None else capacity
        if capacity is None:
            raise ValueError("Streamer.init_state: the temporal context is unbounded; pass capacity (max frames)")
        if context is not None and capacity < context:
            raise ValueError(f"Streamer.init_state: capacity {capacity} < context {context} would forget visible keys")
        t = cfg.temporal
        split = None if self.mesh is None else HeadSplit.for_heads(self.mesh, t.num_kv_heads)  # `_placed` follows it
        caches = [
            KVCache.init(batch, capacity, t.num_kv_heads, t.head_dim, dtype=self.dtype, deferred=True, split=split)
            for _ in range(t.num_layers)
        ]
        tokens = jnp.full((batch, 1 + cfg.n_q, cfg.max_delay + 2), UNGENERATED, jnp.int32)
        return self._placed(StreamState(caches, tokens, jnp.zeros((batch,), jnp.int32)))

    def _placed(self, state: StreamState) -> StreamState:
        """The state as this Streamer keeps it: unchanged without a mesh, else placed by `state_shardings`."""
        return state if self.mesh is None else jax.device_put(state, state_shardings(self.mesh, state))

    def reset(self, state: StreamState, rows) -> StreamState:
        """Restarts the streams of `rows` ((B,) bool) from frame 0, as `init_state` would (a new user on a batch slot);
        the other rows go on untouched. Their cached keys stay in memory but are marked empty (position -1). (They
        could not be seen anyway: positions restart below theirs, and each slot is rewritten before its position
        comes into view; marking them keeps that from being load-bearing.)"""
        rows = np.asarray(rows)
        if rows.dtype != bool or rows.shape != (state.batch,):
            raise ValueError(
                f"Streamer.reset: rows must be a ({state.batch},) bool mask, got {rows.dtype} {rows.shape}"
            )
        mask = jnp.asarray(rows)
        tokens = jnp.where(mask[:, None, None], UNGENERATED, state.tokens)
        return self._placed(StreamState(forget_rows(state.caches, mask), tokens, jnp.where(mask, 0, state.offsets)))

    def step(self, state: StreamState, user_codes, key: jax.Array | None = None) -> tuple[StepOutput, StreamState]:
        """One frame: user_codes (B, n_q - dep_q) ints in [0, card) or -1 (the zero token). Consumes `state`."""
        codes = self._check_codes("Streamer.step", user_codes, state, frames=1)
        key = self._key("Streamer.step", key, None)
        out, pending, tokens, offsets = self._step(self.params, self.depth_weights, state, codes, key)
        return out, self._placed(StreamState(self._commit(state.caches, pending), tokens, offsets))

    def generate(
        self, user_codes, key: jax.Array | None = None, *, state: StreamState | None = None
    ) -> tuple[StepOutput, StreamState]:
        """T frames in one compiled loop: user_codes (B, n_q - dep_q, T). Returns every step's StepOutput stacked
        on a trailing time axis (tokens (B, 1 + dep_q, T): frame t - max_delay at t) and the final state.

        Step t uses `jax.random.split(key, T)[t]`, so a `step` loop given those keys yields the same tokens.
        """
        if state is None:
            shape = np.shape(user_codes)
            state = self.init_state(shape[0] if len(shape) == 3 and shape[0] >= 1 else 1)
        codes = self._check_codes("Streamer.generate", user_codes, state, frames=None)
        keys = self._key("Streamer.generate", key, codes.shape[2])
        out, state = self._generate(self.params, self.depth_weights, state, codes, keys)
        return out, self._placed(state)

    def _key(self, where: str, key, frames: int | None):
        if key is None:
            if not all(s.greedy for s in self.samplers):
                raise ValueError(f"{where}: sampling (temperature > 0) needs a PRNG key")
            key = jax.random.key(0)
        return key if frames is None else jax.random.split(key, frames)

    def _check_codes(self, where: str, user_codes, state: StreamState, *, frames: int | None) -> jax.Array:
        cfg = self.cfg
        if any(isinstance(x, jax.core.Tracer) for x in (user_codes, getattr(state, "offsets", None))):
            raise TypeError(
                f"{where}: called with traced values (inside jax.jit, vmap or scan): the Streamer compiles its own "
                "programs and checks the codes on the host before them; call it eagerly (generate runs a whole loop)"
            )
        if not isinstance(state, StreamState):
            raise TypeError(f"{where}: state must be a StreamState (Streamer.init_state), got {type(state).__name__}")
        if any(c.keys.is_deleted() for c in state.caches):
            raise ValueError(f"{where}: this state was consumed by an earlier step; pass the state that step returned")
        t = cfg.temporal
        buffer = (state.batch, 1 + cfg.n_q, cfg.max_delay + 2)
        caches = [((c.keys.shape[1], c.keys.shape[3]), jnp.dtype(c.keys.dtype), c.capacity) for c in state.caches]
        fits = len(caches) == t.num_layers and all(
            heads == (t.num_kv_heads, t.head_dim) and dtype == self.dtype and (t.context is None or cap >= t.context)
            for heads, dtype, cap in caches
        )
        if tuple(state.tokens.shape) != buffer or not fits:
            raise ValueError(
                f"{where}: the state was not made for this model: delay buffer {tuple(state.tokens.shape)} (expected "
                f"{buffer}), caches (heads, dtype, capacity) {caches[:1]} x {len(caches)} (expected "
                f"{((t.num_kv_heads, t.head_dim), self.dtype, t.context)} x {t.num_layers})"
            )
        ndim = 2 if frames == 1 else 3
        layout = "(B, n_q - dep_q)" if ndim == 2 else "(B, n_q - dep_q, T)"
        check_int_array(where, "user_codes", user_codes, layout)
        codes = np.asarray(user_codes)  # checked on the host: the compiled step never sees an unchecked code
        if codes.ndim != ndim or codes.shape[1] != self.user_streams or (ndim == 3 and codes.shape[2] < 1):
            raise ValueError(
                f"{where}: user codes must be {layout} with n_q - dep_q = {self.user_streams} user codebooks, "
                f"got shape {codes.shape}"
            )
        if codes.shape[0] != state.batch:
            raise ValueError(f"{where}: user codes have batch {codes.shape[0]}, the state has batch {state.batch}")
        codes = check_ids(where, "user_codes: audio ids", codes, vocab=cfg.card)
        steps = 1 if frames == 1 else codes.shape[2]
        capacity = state.caches[0].capacity if state.caches else None
        if cfg.temporal.context is None and capacity is not None:
            reached = int(np.max(np.asarray(state.offsets))) + steps
            if reached > capacity:
                raise ValueError(
                    f"{where}: unbounded context and a cache of {capacity} frames; {reached} frames would overwrite "
                    "visible keys (init_state(capacity=...) larger)"
                )
        return jnp.asarray(codes)


__all__ = ["UNGENERATED", "StepOutput", "StreamState", "Streamer"]
