"""The Mimi codec (kyutai `MimiModel` as `loaders.get_mimi` builds it): SEANet encoder, transformer, learnt stride-2
downsample, split RVQ; and back: RVQ decode, depthwise transposed-conv upsample, transformer, SEANet decoder.

    model = MimiModel(MimiConfig.mimi(), rngs=nnx.Rngs(0))
    codes = model.encode(audio)                  # (B, 1, T) float -> (B, K, frames) int32
    audio = model.decode(codes)                  # -> (B, 1, frames * frame_size)

    state = model.init_state(batch)              # explicit streaming state (a pytree)
    codes, state = model.encode_step(chunk, state)   # chunk (B, 1, n * frame_size), n >= 1
    audio, state = model.decode_step(codes, state)   # codes (B, K, n)
    state = model.reset(state, rows)             # rows (B,) bool back to a fresh stream

Steps never mutate the state they are given, so they jit as they are (`nnx.jit(lambda m, a, s: m.encode_step(a, s))`);
consecutive steps over whole frames give the batch results (equal in float32 up to rounding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from models_flax.checks import check_dtype
from models_flax.mimi.conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTrState
from models_flax.mimi.quantizer import SplitResidualVQ, check_codes
from models_flax.mimi.seanet import SEANetDecoder, SEANetEncoder
from models_flax.mimi.transformer import MimiTransformer, TransformerState
from moshi_spec.mimi import MimiConfig


@struct.dataclass
class MimiState:
    """Everything a Mimi stream carries between chunks; every leaf leads with the batch axis.

    Attributes:
        encoder: SEANetEncoder conv states (a dict of ConvState, see models_flax.mimi.seanet).
        encoder_transformer: its KV ring caches and offsets (B,) in encoder steps.
        downsample: the downsample conv's state ("replicate": rows pad with their first latent step).
        upsample: the transposed conv's overlap tail.
        decoder_transformer: its KV ring caches and offsets.
        decoder: SEANetDecoder conv states.
    """

    encoder: dict[str, Any]
    encoder_transformer: TransformerState
    downsample: ConvState
    upsample: ConvTrState
    decoder_transformer: TransformerState
    decoder: dict[str, Any]

    @property
    def batch(self) -> int:
        return self.encoder_transformer.batch


class MimiModel(nnx.Module):
    """Mimi with kyutai's module tree: encoder, encoder_transformer, downsample, quantizer, upsample,
    decoder_transformer, decoder (parameter paths == models_ref.mimi's torch state_dict keys, `weight` of a conv or
    linear being `kernel` here)."""

    def __init__(
        self,
        cfg: MimiConfig,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        if not isinstance(cfg, MimiConfig):
            raise TypeError(f"MimiModel: expected a MimiConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dtype = check_dtype("MimiModel", dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        d, stride = cfg.dim, cfg.resample_stride
        self.encoder = SEANetEncoder(cfg.seanet, **kw)
        self.encoder_transformer = MimiTransformer(cfg.transformer, layer_scale=cfg.layer_scale, **kw)
        self.downsample = CausalConv1d(d, d, 2 * stride, stride=stride, bias=False, pad_mode="replicate", **kw)
        self.quantizer = SplitResidualVQ(cfg, **kw)
        self.upsample = CausalConvTranspose1d(d, d, 2 * stride, stride=stride, groups=d, bias=False, **kw)
        self.decoder_transformer = MimiTransformer(cfg.transformer, layer_scale=cfg.layer_scale, **kw)
        self.decoder = SEANetDecoder(cfg.seanet, **kw)

    # ---------------------------------------------------------------- batch

    def encode(
        self, audio: jax.Array, *, num_codebooks: int | None = None, capture: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """audio (B, channels, T), T >= 1, in the compute dtype -> codes (B, num_codebooks, ceil(T / frame_size))
        int32 (num_codebooks defaults to cfg.num_codebooks). The audio is padded on the right with zeros to whole
        frames. With capture=True, returns (codes, captures) (see `encode_latent`)."""
        k = self.quantizer.check_num_codebooks("MimiModel.encode", num_codebooks)
        latent, captures = self._latent(audio)
        codes = self.quantizer.encode(latent, k)
        return (codes, captures) if capture else codes

    def encode_latent(
        self, audio: jax.Array, *, capture: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """audio (B, channels, T) -> the unquantized latent (B, D, frames). With capture=True, returns (latent,
        captures): "encoder.input_conv", "encoder.stages.{i}", "encoder.output_conv" (B, C, T'),
        "encoder_transformer.layers.{l}" (B, T', D) (channels last, as the transformer runs), "latent" (B, D,
        frames): MimiConfig.stage_names."""
        latent, captures = self._latent(audio)
        return (latent, captures) if capture else latent

    def decode(self, codes: jax.Array, *, capture: bool = False) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """codes (B, K, frames) integers in [0, bins), n_q_semantic <= K <= n_q -> audio (B, channels, frames *
        frame_size) in the compute dtype. With capture=True, returns (audio, captures): "quantizer.decode" and
        "upsample" (B, D, .), "decoder_transformer.layers.{l}" (B, T', D), "decoder.input_conv",
        "decoder.stages.{i}", "decoder.output_conv" (B, C, T')."""
        captures: dict[str, jax.Array] = {}
        latent = self.decode_latent(codes)
        captures["quantizer.decode"] = latent
        x = self.upsample(latent)
        captures["upsample"] = x
        layers: dict[str, jax.Array] = {}
        x, _ = self.decoder_transformer(x.transpose(0, 2, 1), capture=layers)
        captures.update({f"decoder_transformer.{name}": v for name, v in layers.items()})
        stages: dict[str, jax.Array] = {}
        audio = self.decoder(x.transpose(0, 2, 1), capture=stages)
        captures.update({f"decoder.{name}": v for name, v in stages.items()})
        return (audio, captures) if capture else audio

    def decode_latent(self, codes: jax.Array) -> jax.Array:
        """codes (B, K, frames) -> the quantized latent (B, D, frames): the sum of the codebooks' centroids,
        projected."""
        self._check_codes("MimiModel.decode", codes)
        return self.quantizer.decode(codes)

    def _latent(self, audio: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        self._check_audio("MimiModel.encode", audio, whole_frames=False)
        frame = self.cfg.frame_size
        extra = -audio.shape[2] % frame  # kyutai pad_for_conv1d(x, frame_size, frame_size)
        x = jnp.pad(audio, ((0, 0), (0, 0), (0, extra))) if extra else audio
        captures: dict[str, jax.Array] = {}
        stages: dict[str, jax.Array] = {}
        x = self.encoder(x, capture=stages)
        captures.update({f"encoder.{name}": v for name, v in stages.items()})
        layers: dict[str, jax.Array] = {}
        x, _ = self.encoder_transformer(x.transpose(0, 2, 1), capture=layers)
        captures.update({f"encoder_transformer.{name}": v for name, v in layers.items()})
        latent = self.downsample(x.transpose(0, 2, 1))
        captures["latent"] = latent
        return latent, captures

    # ---------------------------------------------------------------- streaming

    def init_state(self, batch: int, *, chunk_frames: int = 1) -> MimiState:
        """A fresh stream of `batch` rows. The transformers' KV rings hold context + chunk_frames * resample_stride
        - 1 steps and take a chunk in pieces of chunk_frames frames (any chunk length is exact; a larger
        chunk_frames means fewer, longer attention calls for multi-frame chunks and a larger cache)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"MimiModel.init_state: batch must be a positive int, got {batch!r}")
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"MimiModel.init_state: chunk_frames must be a positive int, got {chunk_frames!r}")
        context = self.cfg.transformer.context
        if context is None:
            raise ValueError("MimiModel.init_state: streaming needs a bounded transformer context")
        return self._init_state(batch, context + chunk_frames * self.cfg.resample_stride - 1)

    def _init_state(self, batch: int, capacity: int) -> MimiState:
        return MimiState(
            encoder=self.encoder.init_state(batch),
            encoder_transformer=self.encoder_transformer.init_state(batch, capacity=capacity),
            downsample=self.downsample.init_state(batch),
            upsample=self.upsample.init_state(batch),
            decoder_transformer=self.decoder_transformer.init_state(batch, capacity=capacity),
            decoder=self.decoder.init_state(batch),
        )

    def encode_step(
        self, audio: jax.Array, state: MimiState, *, num_codebooks: int | None = None
    ) -> tuple[jax.Array, MimiState]:
        """audio (B, channels, n * frame_size), n >= 1 -> (codes (B, num_codebooks, n) int32, new state); the decoder
        half of the state is passed through."""
        k = self.quantizer.check_num_codebooks("MimiModel.encode_step", num_codebooks)
        self._check_state("MimiModel.encode_step", state)
        self._check_audio("MimiModel.encode_step", audio, whole_frames=True)
        self._check_batch("MimiModel.encode_step", state, audio.shape[0])
        x, encoder = self.encoder.step(audio, state.encoder)
        x, encoder_transformer = self.encoder_transformer.step(x.transpose(0, 2, 1), state.encoder_transformer)
        latent, downsample = self.downsample.step(x.transpose(0, 2, 1), state.downsample)
        codes = self.quantizer.encode(latent, k)
        state = state.replace(encoder=encoder, encoder_transformer=encoder_transformer, downsample=downsample)
        return codes, state

    def decode_step(self, codes: jax.Array, state: MimiState) -> tuple[jax.Array, MimiState]:
        """codes (B, K, n), n >= 1 -> (audio (B, channels, n * frame_size), new state); the encoder half of the state
        is passed through."""
        self._check_state("MimiModel.decode_step", state)
        self._check_codes("MimiModel.decode_step", codes)
        self._check_batch("MimiModel.decode_step", state, codes.shape[0])
        latent = self.quantizer.decode(codes)
        x, upsample = self.upsample.step(latent, state.upsample)
        x, decoder_transformer = self.decoder_transformer.step(x.transpose(0, 2, 1), state.decoder_transformer)
        audio, decoder = self.decoder.step(x.transpose(0, 2, 1), state.decoder)
        state = state.replace(upsample=upsample, decoder_transformer=decoder_transformer, decoder=decoder)
        return audio, state

    def reset(self, state: MimiState, rows: jax.Array | np.ndarray) -> MimiState:
        """Rows where `rows` ((B,) bool) is True start afresh (as `init_state` made them), the others go on untouched:
        a `jnp.where` on every leaf (KV slots marked empty, conv carries zeroed, `first` set, offsets 0)."""
        self._check_state("MimiModel.reset", state)
        if not hasattr(rows, "dtype") or rows.dtype != jnp.bool_ or tuple(rows.shape) != (state.batch,):
            raise ValueError(
                f"MimiModel.reset: rows must be a ({state.batch},) bool mask, got "
                f"{getattr(rows, 'dtype', type(rows).__name__)} {tuple(getattr(rows, 'shape', ()))}"
            )
        mask = jnp.asarray(rows)
        fresh = self._init_state(state.batch, state.encoder_transformer.capacity)

        def pick(new: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(mask.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)

        return jax.tree.map(pick, fresh, state)

    # ---------------------------------------------------------------- checks

    def _check_audio(self, where: str, audio: jax.Array, *, whole_frames: bool) -> None:
        channels, frame = self.cfg.seanet.channels, self.cfg.frame_size
        if not hasattr(audio, "shape") or not hasattr(audio, "dtype"):
            raise TypeError(f"{where}: audio must be an array (B, {channels}, T), got {type(audio).__name__}")
        if audio.ndim != 3 or audio.shape[1] != channels:
            raise ValueError(f"{where}: audio must be (B, {channels}, T), got shape {tuple(audio.shape)}")
        if jnp.dtype(audio.dtype) != self.dtype:
            raise TypeError(f"{where}: audio dtype {audio.dtype} differs from the model's dtype {self.dtype}; cast it")
        length = audio.shape[2]
        if audio.shape[0] < 1 or length < 1 or (whole_frames and length % frame):
            need = f"T a positive multiple of frame_size {frame}" if whole_frames else "T >= 1"
            raise ValueError(f"{where}: audio {tuple(audio.shape)} must have B >= 1 and {need}")

    def _check_codes(self, where: str, codes: jax.Array) -> None:
        cfg = self.cfg
        check_codes(where, codes, bins=cfg.bins)
        if not cfg.n_q_semantic <= codes.shape[1] <= cfg.n_q or codes.shape[0] < 1 or codes.shape[2] < 1:
            raise ValueError(
                f"{where}: codes must be (B, K, frames) with n_q_semantic {cfg.n_q_semantic} <= K <= n_q {cfg.n_q} "
                f"and B, frames >= 1, got shape {tuple(codes.shape)}"
            )

    def _check_state(self, where: str, state: MimiState) -> None:
        if not isinstance(state, MimiState):
            raise TypeError(f"{where}: state must be a MimiState (MimiModel.init_state), got {type(state).__name__}")

    def _check_batch(self, where: str, state: MimiState, batch: int) -> None:
        if state.batch != batch:
            raise ValueError(f"{where}: the input has batch {batch}, the state has batch {state.batch}")
