"""Layer-level draws: configs of one transformer layer (with kyutai's layer options), the inputs and layer_idx of a
layer call (`Case`), and raw attention inputs for the Pallas kernels (`AttentionCase`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from moshi_spec import ACTIVATIONS, TransformerConfig

DTYPES = ("float32", "bfloat16")
LAYER_IDX_MODES = ("none", "int", "0d", "1d", "broadcast")
MAGNITUDES = (1e-3, 1.0, 30.0)
ATTENTION_MAGNITUDES = (1e-3, 1.0)
"""Input scales for a standalone attention layer. In the model attention only sees RMS-normalized inputs; at rms 30
its scores reach ~1e3, where one-ulp differences of torch's and XLA's float32 cos/sin (rope) move near-tied softmaxes
by up to 6e-5 x rms (measured on a drawn example, hf->flax and ref->flax alike; 6e-7 with rope off): conditioning, not
porting. Decoder layers normalize first and keep drawing all of MAGNITUDES."""


@dataclass(frozen=True)
class Case:
    """One drawn example: a config, an input and how to call the layer."""

    cfg: TransformerConfig
    dtype: str
    x: np.ndarray  # float32 values; each implementation casts them to `dtype` (identically: round to nearest even)
    positions: np.ndarray  # (B, T) int64, offset per row + arange(T)
    layer_idx: object  # None, int, or an int64 array (0-d or 1-D)
    mode: str

    def inputs(self) -> dict:
        """The layer's inputs as the adapters take them (parity/harness/adapters/base.py)."""
        return {"x": self.x, "positions": self.positions, "layer_idx": self.layer_idx}

    def describe(self) -> dict:
        """Builtin-typed summary for the record (the reproduction of this example)."""
        idx = self.layer_idx.tolist() if isinstance(self.layer_idx, np.ndarray) else self.layer_idx
        return {
            "dtype": self.dtype,
            "x_shape": list(self.x.shape),
            "x_rms": float(np.sqrt(np.mean(np.square(self.x)))),
            "offsets": self.positions[:, 0].tolist(),
            "layer_idx_mode": self.mode,
            "layer_idx": idx,
        }


@st.composite
def configs(
    draw: st.DrawFn,
    *,
    flexible: bool | None = None,
    rope: bool | None = None,
    kyutai: bool = False,
    rope_layout: str | None = None,
) -> TransformerConfig:
    """A layer config. kyutai=True restricts to what kyutai can build (head_dim = dim / heads, eps 1e-8)."""
    dim = draw(st.sampled_from((16, 32)))
    num_heads = draw(st.sampled_from((2, 4)))
    head_dim = None if kyutai else draw(st.sampled_from((None, 4, 8, 16)))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, num_heads) if num_heads % h == 0]))
    flex = draw(st.booleans()) if flexible is None else flexible
    return TransformerConfig(
        dim=dim,
        num_heads=num_heads,
        num_layers=1,
        ffn_dim=draw(st.sampled_from((32, 48, 64))),
        head_dim_override=head_dim,
        num_kv_heads_override=kv_heads,
        activation=draw(st.sampled_from(ACTIVATIONS)),
        norm_eps=1e-8 if kyutai else draw(st.sampled_from((1e-8, 1e-6, 1e-5))),
        rope=draw(st.booleans()) if rope is None else rope,
        rope_theta=draw(st.sampled_from((10_000.0, 500.0, 1e6))),
        rope_layout=rope_layout or draw(st.sampled_from(("half", "interleaved"))),
        context=draw(st.sampled_from((None, 1, 3, 8))),
        num_codebooks=draw(st.sampled_from((2, 3, 4))) if flex else 1,  # HF builds plain linears at 1
        flexible=flex,
    )


@st.composite
def kyutai_layer_options(draw: st.DrawFn, cfg: TransformerConfig) -> tuple[TransformerConfig, str]:
    """A kyutai-buildable layer config (`configs(kyutai=True)`) with the options of kyutai's StreamingTransformerLayer
    drawn, each choice's first value turning its option on: the norm kind (its eps kyutai's), the plain FFN
    (gating="none": exact gelu, no weight set per step), layer_scale and with rope kyutai's rope_concat (its weights
    half-split); plus a dtype kyutai runs it in (its LayerNormF32 cannot run bfloat16 weights on CPU: float32 only
    there)."""
    norm = draw(st.sampled_from(("layer_norm", "layer_norm_f32", "rms_norm", "rms_norm_f32")))
    plain = not cfg.flexible and draw(st.booleans())
    concat = cfg.rope and draw(st.sampled_from((True, False)))
    cfg = cfg.replace(norm=norm, norm_eps=None, layer_scale=draw(st.sampled_from((0.01, None))), rope_concat=concat)
    if plain:
        cfg = cfg.replace(gated=False, activation="gelu")
    return cfg, draw(st.sampled_from(("float32",) if norm == "layer_norm_f32" else DTYPES))


@st.composite
def cases(
    draw: st.DrawFn,
    cfg_strategy: st.SearchStrategy[TransformerConfig],
    *,
    dtype: str | None = None,
    max_offset: int = 4096,
    zero_offsets: bool = False,
    modes: tuple[str, ...] = LAYER_IDX_MODES,
    width: str = "dim",
    magnitudes: tuple[float, ...] = MAGNITUDES,
) -> Case:
    """A config plus an input (B, T, width) in float32, positions (B, T) and a layer_idx valid for the config.

    For flexible configs the sequence length follows the layer_idx mode: None needs T == num_codebooks, broadcast
    T == 1.
    max_offset bounds per-row position offsets (HF comparisons use small ones: HF's rope frequencies round differently,
    see test_rope's expected divergence); zero_offsets pins them at 0 (kyutai outside streaming).
    """
    cfg = draw(cfg_strategy)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.sampled_from((1, 2, 3)))
    mode = draw(st.sampled_from(modes)) if cfg.flexible else "none"
    layers = cfg.num_codebooks
    layer_idx: object = None
    if not cfg.flexible or mode == "none":
        length = layers if cfg.flexible else draw(st.sampled_from((1, 2, 5, 9)))
    elif mode == "broadcast":
        length = 1
        layer_idx = rng.integers(0, layers, size=draw(st.integers(1, 4)))
    else:
        length = draw(st.sampled_from((1, 2, 5)))
        if mode == "int":
            layer_idx = int(rng.integers(0, layers))
        elif mode == "0d":
            layer_idx = np.asarray(rng.integers(0, layers))
        else:
            layer_idx = rng.integers(0, layers, size=length)
    offsets = np.zeros(batch, np.int64) if zero_offsets else rng.integers(0, max_offset + 1, size=batch)
    positions = offsets[:, None] + np.arange(length)[None]
    magnitude = draw(st.sampled_from(magnitudes))
    features = {"dim": cfg.dim, "head": cfg.head_dim}[width]
    shape = (batch, length, cfg.num_heads, features) if width == "head" else (batch, length, features)
    x = (magnitude * rng.standard_normal(shape)).astype(np.float32)
    return Case(cfg, dtype or draw(st.sampled_from(DTYPES)), x, positions.astype(np.int64), layer_idx, mode)


@dataclass(frozen=True)
class AttentionCase:
    """Raw attention inputs for the Pallas kernels: q (B, T, H, D), k/v (B, S, Hkv, D) float32 values (cast to `dtype`
    by the test), positions (B, T) and (B, S) (-1: an empty cache slot), and the context window."""

    dtype: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    q_positions: np.ndarray
    k_positions: np.ndarray
    context: int | None

    def describe(self) -> dict:
        return {
            "dtype": self.dtype,
            "q_shape": list(self.q.shape),
            "kv_shape": list(self.k.shape),
            "context": self.context,
            "q_offsets": self.q_positions[:, 0].tolist(),
            "valid_keys": (self.k_positions >= 0).sum(axis=1).tolist(),
            "q_rms": float(np.sqrt(np.mean(np.square(self.q)))),
        }


@st.composite
def attention_cases(
    draw: st.DrawFn,
    *,
    steps: tuple[int, ...] = (1, 3, 9, 17),
    kv_lengths: tuple[int, ...] = (1, 5, 12, 21),
    head_dims: tuple[int, ...] = (8, 16, 64),
    ring: bool = False,
    dtype: str | None = None,
) -> AttentionCase:
    """Attention inputs over lengths that are not block multiples, q_len != kv_len, per-row offsets, context windows,
    grouped kv heads and empty (-1) key slots.

    ring=False: keys are a prefix of the stream, positions k_off + arange(S) with some leading slots empty; the queries
    are the last T positions (shifted by a few steps either way, so some rows may see no key at all). ring=True: keys
    are a ring cache of capacity S after writing positions 0..end (slot p % S, -1 where never written), the queries the
    T positions ending at `end`: slot order then differs from position order.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.sampled_from((1, 2)))
    length = draw(st.sampled_from(steps))
    kv_len = draw(st.sampled_from(kv_lengths))
    heads, kv_heads = draw(st.sampled_from(((2, 1), (4, 2), (2, 2))))
    head_dim = draw(st.sampled_from(head_dims))
    context = draw(st.sampled_from((None, 1, 4, 7, 3000)))
    q_pos = np.zeros((batch, length), np.int64)
    k_pos = np.full((batch, kv_len), -1, np.int64)
    for b in range(batch):
        if ring:
            end = int(rng.integers(length - 1, length + 3 * kv_len))
            written = np.arange(max(0, end + 1 - kv_len), end + 1)
            k_pos[b, written % kv_len] = written
            q_pos[b] = np.arange(end + 1 - length, end + 1)
        else:
            offset = int(rng.integers(0, 50))
            empty = int(rng.integers(0, kv_len)) if draw(st.booleans()) else 0
            k_pos[b, empty:] = offset + np.arange(kv_len - empty)
            shift = draw(st.sampled_from((0, 0, 0, 2, -3)))
            q_pos[b] = offset + kv_len - length + shift + np.arange(length)
    magnitude = draw(st.sampled_from(MAGNITUDES))
    q, k, v = (
        (scale * rng.standard_normal(shape)).astype(np.float32)
        for scale, shape in (
            (magnitude, (batch, length, heads, head_dim)),
            (magnitude, (batch, kv_len, kv_heads, head_dim)),
            (1.0, (batch, kv_len, kv_heads, head_dim)),
        )
    )
    return AttentionCase(dtype or draw(st.sampled_from(DTYPES)), q, k, v, q_pos, k_pos, context)
