"""The Moshi LM: temporal transformer over frames, inner-monologue text head, depth transformer over codebooks.

Names follow HF's `MoshiForConditionalGeneration` (without the Mimi codec) so that the hf <-> ref tables stay near the
identity; the call takes codes shaped like kyutai `LMModel.forward`: (B, 1 + n_q, T), text first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models_ref.checks import check_ids, check_int_tensor
from models_ref.delays import delay, undelay
from models_ref.embedding import Embedding
from models_ref.layer import DecoderLayer
from models_ref.linear import FlexibleLinear, Linear
from models_ref.norm import make_norm
from models_ref.sin_embedding import add_sin_embedding
from moshi_spec import LMConfig


@dataclass
class LMOutput:
    text_logits: torch.Tensor  # (B, 1, T, text_out), NaN where invalid
    text_mask: torch.Tensor  # (B, 1, T)
    audio_logits: torch.Tensor  # (B, dep_q, T, card), NaN where invalid
    audio_mask: torch.Tensor  # (B, dep_q, T)
    # (B, extra_heads, T, extra_heads_dim): kyutai's extra heads on the normed temporal output of step t (the step
    # whose text logits are the text stream's at t + delays[0]), no delay undone, no mask; None without extra heads
    extra_logits: torch.Tensor | None = None


class DepthTransformer(nn.Module):
    """Predicts the dep_q audio codebooks of one frame from the temporal state, one codebook per step."""

    def __init__(self, cfg: LMConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        d = cfg.depth
        self.cfg = cfg
        kw = dict(dtype=dtype, norm=cfg.norm_emb, low_rank=cfg.depth_low_rank)
        demux = cfg.demux_second_text_stream
        self.text_embed_tokens = Embedding(cfg.text_card + 1, d.dim, **kw, demux=demux)
        self.embed_tokens = nn.ModuleList([Embedding(cfg.card + 1, d.dim, **kw) for _ in range(cfg.dep_q - 1)])
        # one projection per weight set (kyutai's depformer_in), codebook c using cfg.depth_in_sets[c]
        self.input_projections = FlexibleLinear(cfg.temporal.dim, d.dim, cfg.depth_in_count, dtype=dtype)
        self.layers = nn.ModuleList([DecoderLayer(d, dtype=dtype) for _ in range(d.num_layers)])
        self.lm_heads = FlexibleLinear(d.dim, cfg.card, cfg.dep_q, dtype=dtype, bias=cfg.bias_proj)
        # kyutai's depformer_norms: one norm per codebook on the output, before its head (absent by default)
        n = cfg.depth_out_norm
        self.out_norms = None if n is None else nn.ModuleList([make_norm(n, dtype=dtype) for _ in range(cfg.dep_q)])

    def out_norm(self, x: torch.Tensor, *, first: int = 0) -> torch.Tensor:
        """x (N, S, D), step s the output for codebook first + s, through that codebook's output norm (if any)."""
        if self.out_norms is None:
            return x
        return torch.cat([self.out_norms[first + s](x[:, s : s + 1]) for s in range(x.shape[1])], dim=1)

    def forward(self, tokens: torch.Tensor, *, context: torch.Tensor) -> torch.Tensor:
        """tokens (N, dep_q): the text token, then audio tokens 0..dep_q-2 (teacher forcing); context (N, D).

        Returns (N, dep_q, card) logits.
        """
        n, steps = tokens.shape
        positions = torch.arange(steps).expand(n, -1)
        x = self.stack_input(self.embed(tokens, context=context), positions)
        sets = self.cfg.depth_sets  # codebook c's weight set (None: one set shared by every step)
        layer_idx = None if sets is None else torch.tensor(sets[:steps])
        for layer in self.layers:
            x, _ = layer(x, positions=positions, layer_idx=layer_idx)
        return self.lm_heads(self.out_norm(x))

    def stack_input(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The first layer's input: the embeddings x (N, S, D) at positions (N, S), plus the sinusoidal embedding
        when the depth stack has one (kyutai's depformer_pos_emb "sin")."""
        return add_sin_embedding(self.cfg.depth, x, positions)

    def embed(self, tokens: torch.Tensor, *, context: torch.Tensor) -> torch.Tensor:
        """The first layer's input (N, dep_q, D): each step's token embedding plus its projection of the context."""
        steps = tokens.shape[1]
        embeds = [self.text_embed_tokens(tokens[:, 0])]
        embeds += [self.embed_tokens[c - 1](tokens[:, c]) for c in range(1, steps)]
        x = torch.stack(embeds, dim=1)
        return x + self.input_projections(context[:, None], layer_idx=torch.tensor(self.cfg.depth_in_sets[:steps]))


class LM(nn.Module):
    def __init__(self, cfg: LMConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        t = cfg.temporal
        self.cfg = cfg
        self.embed_tokens = nn.ModuleList(
            [Embedding(cfg.card + 1, t.dim, dtype=dtype, norm=cfg.norm_emb) for _ in range(cfg.n_q)]
        )
        demux = cfg.demux_second_text_stream
        self.text_embed_tokens = Embedding(cfg.text_card + 1, t.dim, dtype=dtype, norm=cfg.norm_emb, demux=demux)
        self.layers = nn.ModuleList([DecoderLayer(t, dtype=dtype) for _ in range(t.num_layers)])
        self.norm = make_norm(t, dtype=dtype)
        self.lm_head = Linear(t.dim, cfg.text_out, dtype=dtype, bias=cfg.bias_proj)
        self.extra_heads = nn.ModuleList(
            [Linear(t.dim, cfg.extra_heads_dim, dtype=dtype) for _ in range(cfg.extra_heads)]
        )
        self.depth = DepthTransformer(cfg, dtype=dtype)

    def initial_tokens(self) -> torch.Tensor:
        return torch.tensor([self.cfg.initial_text_token] + [self.cfg.initial_audio_token] * self.cfg.n_q)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1 + n_q, T) -> (B, T, D): sum of the audio embeddings, then + the text's (kyutai's order)."""
        x = self.embed_tokens[0](tokens[:, 1])
        for k in range(1, self.cfg.n_q):
            x = x + self.embed_tokens[k](tokens[:, 1 + k])
        return x + self.text_embed_tokens(tokens[:, 0])

    def stack_input(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The first layer's input: the embeddings x (B, T, D) at positions (B, T), plus the sinusoidal embedding when
        the temporal stack has one (kyutai's positional_embedding "sin" or "sin_rope")."""
        return add_sin_embedding(self.cfg.temporal, x, positions)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, 1 + n_q, T), B and T >= 1, integers: text ids (stream 0) in [0, text_vocab) (text_card, or the
        muxed pairs with demux_second_text_stream), audio ids in [0, card), or -1 (the zero token) -> int64 codes;
        anything else raises (models_flax's LM.check_codes)."""
        cfg = self.cfg
        layout = f"(B, 1 + n_q = {1 + cfg.n_q}, T)"
        check_int_tensor("LM", "codes", codes, layout)
        if codes.dim() != 3 or codes.shape[1] != 1 + cfg.n_q or codes.shape[0] < 1 or codes.shape[2] < 1:
            raise ValueError(f"LM: codes must be {layout} with B >= 1 and T >= 1, got shape {tuple(codes.shape)}")
        text = check_ids("LM", "codes[:, 0]: text ids", codes[:, :1], vocab=cfg.text_vocab)
        audio = check_ids("LM", "codes[:, 1:]: audio ids", codes[:, 1:], vocab=cfg.card, offset=(0, 1, 0))
        return torch.cat([text, audio], dim=1)

    def forward(self, codes: torch.Tensor) -> LMOutput:
        """codes (B, 1 + n_q, T), text first (see `check_codes`); logits are aligned with the codes they predict."""
        cfg = self.cfg
        codes = self.check_codes(codes)
        batch, _, length = codes.shape
        initial = self.initial_tokens()
        delayed = torch.cat([initial.view(1, -1, 1).expand(batch, -1, 1), delay(codes, cfg.delays, initial)], dim=2)
        inputs, targets = delayed[:, :, :-1], delayed[:, :, 1:]
        positions = torch.arange(length).expand(batch, -1)
        x = self.stack_input(self.embed(inputs), positions)
        for layer in self.layers:
            x, _ = layer(x, positions=positions)
        x = self.norm(x)
        text_logits = self.lm_head(x)[:, None]
        extra = torch.stack([head(x) for head in self.extra_heads], dim=1) if self.extra_heads else None
        depth_tokens = targets[:, : cfg.dep_q].permute(0, 2, 1).reshape(batch * length, cfg.dep_q)
        audio = self.depth(depth_tokens, context=x.reshape(batch * length, -1))
        audio = audio.view(batch, length, cfg.dep_q, -1).permute(0, 2, 1, 3)
        audio_logits, audio_mask = undelay(audio, cfg.delays[1 : 1 + cfg.dep_q])
        text_logits, text_mask = undelay(text_logits, cfg.delays[:1])
        audio_mask &= codes[:, 1 : 1 + cfg.dep_q] != -1
        text_mask &= codes[:, :1] != -1
        return LMOutput(text_logits, text_mask, audio_logits, audio_mask, extra)
