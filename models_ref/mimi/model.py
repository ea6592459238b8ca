"""The Mimi codec (kyutai `MimiModel` as `loaders.get_mimi` builds it): audio <-> discrete codes at frame_rate.

    model = MimiModel(MimiConfig.tiny())
    codes = model.encode(audio)                  # audio (B, channels, T) -> (B, num_codebooks, ceil(T / frame_size))
    audio = model.decode(codes)                  # (B, K, F) -> (B, channels, F * frame_size)
    codes, taps = model.encode(audio, capture=True)   # taps: named stage outputs (MimiConfig.stage_names)

    state = model.init_state(batch)              # explicit streaming state, nothing stored in the module
    codes, state = model.encode_step(chunk, state)    # chunk (B, channels, n * frame_size) -> (B, K, n)
    audio, state = model.decode_step(codes, state)    # (B, K, n) -> (B, channels, n * frame_size)
    state = model.reset(state, rows)             # rows (B,) bool back to a fresh stream

Encode: right-pad the audio with zeros to whole frames, SEANet encoder, transformer (channels-last), a learnt
strided downsample to frame_rate (replicate padding), split RVQ. Decode: RVQ lookup, a depthwise transposed upsample,
transformer, SEANet decoder (no trimming: whole frames of audio). Streaming in whole frames equals the batch calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models_ref.checks import check_dtype, check_int_tensor
from models_ref.mimi.conv import CausalConv1d, CausalConvTranspose1d, ConvState, ConvTrState
from models_ref.mimi.quantizer import SplitResidualVQ
from models_ref.mimi.seanet import SEANetDecoder, SEANetEncoder, SEANetState
from models_ref.mimi.transformer import MimiTransformer, TransformerState
from moshi_spec import MimiConfig


@dataclass(frozen=True)
class MimiState:
    """Everything a Mimi stream carries between calls (every leaf tensor has the batch on its first axis).

    Attributes:
        encoder: SEANetEncoder's convolution states.
        encoder_transformer: KV rings and offsets of the encoder transformer.
        downsample: the frame-rate downsample's ConvState.
        upsample: the frame-rate upsample's ConvTrState.
        decoder_transformer: KV rings and offsets of the decoder transformer.
        decoder: SEANetDecoder's convolution states.
    """

    encoder: SEANetState
    encoder_transformer: TransformerState
    downsample: ConvState
    upsample: ConvTrState
    decoder_transformer: TransformerState
    decoder: SEANetState

    @property
    def batch(self) -> int:
        return self.downsample.first.shape[0]


def _select_rows(rows: torch.Tensor, fresh: Any, old: Any) -> Any:
    """The state tree `old` with the rows where `rows` is True taken from `fresh` (same structure)."""
    if isinstance(old, torch.Tensor):
        return torch.where(rows.view(-1, *([1] * (old.dim() - 1))), fresh, old)
    if dataclasses.is_dataclass(old) and not isinstance(old, type):
        names = [f.name for f in dataclasses.fields(old)]
        return dataclasses.replace(old, **{n: _select_rows(rows, getattr(fresh, n), getattr(old, n)) for n in names})
    if isinstance(old, dict):
        return {key: _select_rows(rows, fresh[key], value) for key, value in old.items()}
    if isinstance(old, list | tuple):
        return type(old)(_select_rows(rows, f, o) for f, o in zip(fresh, old, strict=True))
    raise TypeError(f"MimiModel.reset: unexpected state leaf {type(old).__name__}")


class MimiModel(nn.Module):
    """Mimi: SEANet encoder/decoder, two transformers, frame-rate resampling and a split RVQ.

    Members: `encoder` SEANetEncoder, `encoder_transformer` MimiTransformer, `downsample` CausalConv1d(D, D,
    2 * stride, stride, no bias, replicate padding), `quantizer` SplitResidualVQ, `upsample` CausalConvTranspose1d(D, D,
    2 * stride, stride, groups=D, no bias), `decoder_transformer` MimiTransformer, `decoder` SEANetDecoder; stride =
    cfg.resample_stride.
    """

    def __init__(self, cfg: MimiConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(cfg, MimiConfig):
            raise TypeError(f"MimiModel: cfg must be a MimiConfig, got {type(cfg).__name__}")
        check_dtype("MimiModel", dtype)
        self.cfg, self.dtype = cfg, dtype
        d, stride, t = cfg.dim, cfg.resample_stride, cfg.transformer
        self.encoder = SEANetEncoder(cfg.seanet, dtype=dtype)
        self.encoder_transformer = MimiTransformer(t, layer_scale=cfg.layer_scale, dtype=dtype)
        self.downsample = CausalConv1d(d, d, 2 * stride, stride=stride, bias=False, pad_mode="replicate", dtype=dtype)
        self.quantizer = SplitResidualVQ(cfg, dtype=dtype)
        self.upsample = CausalConvTranspose1d(d, d, 2 * stride, stride=stride, groups=d, bias=False, dtype=dtype)
        self.decoder_transformer = MimiTransformer(t, layer_scale=cfg.layer_scale, dtype=dtype)
        self.decoder = SEANetDecoder(cfg.seanet, dtype=dtype)

    # ---- checks -------------------------------------------------------------------------------------------------

    def _check_audio(self, where: str, audio: object, *, whole_frames: bool) -> torch.Tensor:
        cfg = self.cfg
        layout = f"(B, channels = {cfg.seanet.channels}, T)"
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"{where}: audio must be a torch tensor {layout}, got {type(audio).__name__}")
        if audio.dim() != 3 or audio.shape[1] != cfg.seanet.channels or audio.shape[0] < 1:
            raise ValueError(f"{where}: audio must be {layout} with B >= 1, got shape {tuple(audio.shape)}")
        if audio.dtype != self.dtype:
            raise TypeError(f"{where}: audio dtype {audio.dtype} differs from the model's dtype {self.dtype}; cast it")
        length = audio.shape[-1]
        if whole_frames and (length <= 0 or length % cfg.frame_size):
            raise ValueError(
                f"{where}: audio length T = {length} (shape {tuple(audio.shape)}) must be a positive multiple of "
                f"frame_size {cfg.frame_size}; buffer the stream into whole frames"
            )
        if length <= 0:
            raise ValueError(f"{where}: audio must have T >= 1 samples, got shape {tuple(audio.shape)}")
        return audio

    def _check_codes(self, where: str, codes: object) -> torch.Tensor:
        cfg = self.cfg
        layout = f"(B, K, frames) with {cfg.n_q_semantic} <= K <= {cfg.n_q}"
        check_int_tensor(where, "codes", codes, layout)
        assert isinstance(codes, torch.Tensor)
        if (
            codes.dim() != 3
            or codes.shape[0] < 1
            or codes.shape[2] < 1
            or not cfg.n_q_semantic <= codes.shape[1] <= cfg.n_q
        ):
            raise ValueError(f"{where}: codes must be {layout}, B >= 1, frames >= 1; got shape {tuple(codes.shape)}")
        bad = (codes < 0) | (codes >= cfg.bins)
        if bool(bad.any()):
            first = torch.nonzero(bad)[0].tolist()
            raise ValueError(
                f"{where}: codes must be in [0, bins {cfg.bins}); got {int(codes[tuple(first)])} at index "
                f"({', '.join(map(str, first))}) of shape {tuple(codes.shape)} ({int(bad.sum())} out of range)"
            )
        return codes.long()

    def _num_codebooks(self, where: str, num_codebooks: int | None) -> int:
        cfg = self.cfg
        if num_codebooks is None:
            return cfg.num_codebooks
        if isinstance(num_codebooks, bool) or not isinstance(num_codebooks, int):
            raise TypeError(f"{where}: num_codebooks must be an int or None, got {num_codebooks!r}")
        if not cfg.n_q_semantic <= num_codebooks <= cfg.n_q:
            raise ValueError(
                f"{where}: num_codebooks must be in [n_q_semantic {cfg.n_q_semantic}, n_q {cfg.n_q}], "
                f"got {num_codebooks}"
            )
        return num_codebooks

    def _check_state(self, where: str, state: object, batch: int) -> MimiState:
        if not isinstance(state, MimiState):
            raise TypeError(f"{where}: state must be a MimiState (from init_state), got {type(state).__name__}")
        if state.batch != batch:
            raise ValueError(f"{where}: input batch {batch} differs from the state's batch {state.batch}")
        return state

    # ---- batch --------------------------------------------------------------------------------------------------

    def _positions(self, batch: int, length: int) -> torch.Tensor:
        return torch.arange(length).expand(batch, -1)

    def _encode_latent(self, audio: torch.Tensor, capture: dict[str, torch.Tensor] | None) -> torch.Tensor:
        audio = self._check_audio("MimiModel.encode", audio, whole_frames=False)
        frame = self.cfg.frame_size
        audio = F.pad(audio, (0, -audio.shape[-1] % frame))
        stages: dict[str, torch.Tensor] | None = {} if capture is not None else None
        x = self.encoder(audio, capture=stages)
        layers: list[torch.Tensor] | None = [] if capture is not None else None
        y, _ = self.encoder_transformer(
            x.transpose(1, 2), positions=self._positions(x.shape[0], x.shape[2]), capture=layers
        )
        latent = self.downsample(y.transpose(1, 2))
        if capture is not None:
            assert layers is not None
            assert stages is not None
            capture.update({f"encoder.{name}": out for name, out in stages.items()})
            capture.update({f"encoder_transformer.layers.{i}": out for i, out in enumerate(layers)})
            capture["latent"] = latent
        return latent

    def encode_latent(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, channels, T), T >= 1 -> the unquantized latent (B, D, ceil(T / frame_size))."""
        return self._encode_latent(audio, None)

    def encode(
        self, audio: torch.Tensor, *, num_codebooks: int | None = None, capture: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """audio (B, channels, T), T >= 1, in the model dtype -> codes (B, K, ceil(T / frame_size)) int64.

        The audio is right-padded with zeros to whole frames (kyutai pad_for_conv1d(x, frame_size, frame_size)).
        num_codebooks: K, in [n_q_semantic, n_q]; cfg.num_codebooks when None.
        capture: when True, returns (codes, taps) with taps the named stage outputs (cfg.stage_names()[0]).
        """
        k = self._num_codebooks("MimiModel.encode", num_codebooks)
        taps: dict[str, torch.Tensor] | None = {} if capture else None
        codes = self.quantizer.encode(self._encode_latent(audio, taps), k)
        if taps is not None:
            return codes, taps
        return codes

    def decode_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, frames) -> the dequantized latent (B, D, frames)."""
        return self.quantizer.decode(self._check_codes("MimiModel.decode_latent", codes))

    def decode(
        self, codes: torch.Tensor, *, capture: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """codes (B, K, frames), n_q_semantic <= K <= n_q, integers in [0, bins) -> audio (B, channels,
        frames * frame_size) in the model dtype.

        capture: when True, returns (audio, taps) with taps the named stage outputs (cfg.stage_names()[1]).
        """
        codes = self._check_codes("MimiModel.decode", codes)
        taps: dict[str, torch.Tensor] | None = {} if capture else None
        latent = self.quantizer.decode(codes)
        x = self.upsample(latent)
        layers: list[torch.Tensor] | None = [] if taps is not None else None
        y, _ = self.decoder_transformer(
            x.transpose(1, 2), positions=self._positions(x.shape[0], x.shape[2]), capture=layers
        )
        if taps is not None:
            assert layers is not None
            taps["quantizer.decode"] = latent
            taps["upsample"] = x
            taps.update({f"decoder_transformer.layers.{i}": out for i, out in enumerate(layers)})
        stages: dict[str, torch.Tensor] | None = {} if taps is not None else None
        audio = self.decoder(y.transpose(1, 2), capture=stages)
        if taps is not None:
            assert stages is not None
            taps.update({f"decoder.{name}": out for name, out in stages.items()})
            return audio, taps
        return audio

    # ---- streaming ----------------------------------------------------------------------------------------------

    def init_state(self, batch: int, *, chunk_frames: int = 1) -> MimiState:
        """A fresh stream for `batch` rows.

        chunk_frames: the largest step (in frames) the transformers' KV rings take in one attention call
        (capacity context + chunk_frames * resample_stride - 1); larger steps stay exact, split into such pieces.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"MimiModel.init_state: batch must be an int >= 1, got {batch!r}")
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ValueError(f"MimiModel.init_state: chunk_frames must be an int >= 1, got {chunk_frames!r}")
        max_chunk = chunk_frames * self.cfg.resample_stride
        return self._fresh_state(batch, max_chunk, max_chunk)

    def _fresh_state(self, batch: int, encoder_chunk: int, decoder_chunk: int) -> MimiState:
        return MimiState(
            encoder=self.encoder.init_state(batch),
            encoder_transformer=self.encoder_transformer.init_state(batch, max_chunk=encoder_chunk),
            downsample=self.downsample.init_state(batch),
            upsample=self.upsample.init_state(batch),
            decoder_transformer=self.decoder_transformer.init_state(batch, max_chunk=decoder_chunk),
            decoder=self.decoder.init_state(batch),
        )

    def encode_step(
        self, audio: torch.Tensor, state: MimiState, *, num_codebooks: int | None = None
    ) -> tuple[torch.Tensor, MimiState]:
        """audio (B, channels, n * frame_size), n >= 1 -> (codes (B, K, n), new state); the encoder side of the state
        advances, the decoder side is passed through."""
        audio = self._check_audio("MimiModel.encode_step", audio, whole_frames=True)
        state = self._check_state("MimiModel.encode_step", state, audio.shape[0])
        k = self._num_codebooks("MimiModel.encode_step", num_codebooks)
        x, encoder = self.encoder.step(audio, state.encoder)
        y, encoder_transformer = self.encoder_transformer.step(x.transpose(1, 2), state.encoder_transformer)
        latent, downsample = self.downsample.step(y.transpose(1, 2), state.downsample)
        codes = self.quantizer.encode(latent, k)
        new_state = dataclasses.replace(
            state, encoder=encoder, encoder_transformer=encoder_transformer, downsample=downsample
        )
        return codes, new_state

    def decode_step(self, codes: torch.Tensor, state: MimiState) -> tuple[torch.Tensor, MimiState]:
        """codes (B, K, n), n >= 1 -> (audio (B, channels, n * frame_size), new state); the decoder side of the state
        advances, the encoder side is passed through."""
        codes = self._check_codes("MimiModel.decode_step", codes)
        state = self._check_state("MimiModel.decode_step", state, codes.shape[0])
        x, upsample = self.upsample.step(self.quantizer.decode(codes), state.upsample)
        y, decoder_transformer = self.decoder_transformer.step(x.transpose(1, 2), state.decoder_transformer)
        audio, decoder = self.decoder.step(y.transpose(1, 2), state.decoder)
        new_state = dataclasses.replace(
            state, upsample=upsample, decoder_transformer=decoder_transformer, decoder=decoder
        )
        return audio, new_state

    def reset(self, state: MimiState, rows: torch.Tensor) -> MimiState:
        """rows (B,) bool: those rows back to a fresh stream (both sides), the others untouched."""
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool:
            raise TypeError(f"MimiModel.reset: rows must be a bool tensor (B,), got {getattr(rows, 'dtype', rows)}")
        if rows.dim() != 1:
            raise ValueError(f"MimiModel.reset: rows must be (B,), got shape {tuple(rows.shape)}")
        state = self._check_state("MimiModel.reset", state, rows.shape[0])
        fresh = self._fresh_state(
            state.batch,
            self.encoder_transformer.max_chunk(state.encoder_transformer),
            self.decoder_transformer.max_chunk(state.decoder_transformer),
        )
        return _select_rows(rows, fresh, state)
