"""Mimi's split residual vector quantizer (kyutai `SplitResidualVectorQuantizer` of two `ResidualVectorQuantizer`s
with forced projections, Euclidean codebooks), inference only.

Latents are channels-first (B, input_dim, T) as SEANet's. Codebook lookups and distances run in float32 whatever the
module dtype; the projections run in the module dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models_ref.checks import check_dtype, check_int_tensor
from moshi_spec import MimiConfig


def _check_codes(where: str, codes: object, bins: int, layout: str) -> torch.Tensor:
    """Integer codes in [0, bins) -> int64; anything else raises (never clamped)."""
    check_int_tensor(where, "codes", codes, layout)
    assert isinstance(codes, torch.Tensor)
    codes = codes.long()
    bad = (codes < 0) | (codes >= bins)
    if bool(bad.any()):
        first = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"{where}: codes must be in [0, {bins}); got {int(codes[tuple(first)])} at index "
            f"({', '.join(map(str, first))}) of shape {tuple(codes.shape)} ({int(bad.sum())} out of range)"
        )
    return codes


class PointwiseProjection(nn.Module):
    """weight (out_features, in_features), bias-free: (B, in_features, T) -> (B, out_features, T) at every step.

    Computed as a kernel-1 convolution, which is what kyutai's 1x1 Conv1d computes (bit for bit on CPU, where a
    matmul over (B, T, C) rounds differently); flax stores `kernel` (in_features, out_features).
    """

    def __init__(self, in_features: int, out_features: int, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_dtype("PointwiseProjection", dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features, dtype=dtype) / in_features**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"PointwiseProjection: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[1] != self.in_features:
            raise ValueError(f"PointwiseProjection: expected (B, {self.in_features}, T), got shape {tuple(x.shape)}")
        if x.dtype != self.weight.dtype:
            raise TypeError(
                f"PointwiseProjection: input dtype {x.dtype} differs from the layer's dtype {self.weight.dtype}; "
                "cast explicitly"
            )
        return F.conv1d(x, self.weight[:, :, None])


class Codebook(nn.Module):
    """A Euclidean codebook of `bins` centroids of width `dim` (kyutai `EuclideanCodebook`).

    Parameters (never trained; kept in the module dtype, used in float32):
        embedding_sum: (bins, dim), the running sum of the vectors assigned to each centroid.
        cluster_usage: (bins,), the running count of those vectors.
    The centroids are embedding_sum / max(cluster_usage, eps). A fresh Codebook has random sums and unit usage (a
    usable codebook); kyutai's fresh one is all zeros until its k-means initialisation.
    """

    def __init__(self, dim: int, bins: int, *, eps: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_dtype("Codebook", dtype)
        if eps < 0:
            raise ValueError(f"Codebook: eps must be >= 0, got {eps}")
        self.dim, self.bins, self.eps = dim, bins, eps
        self.embedding_sum = nn.Parameter(torch.randn(bins, dim, dtype=dtype), requires_grad=False)
        self.cluster_usage = nn.Parameter(torch.ones(bins, dtype=dtype), requires_grad=False)

    def embedding(self) -> torch.Tensor:
        """(bins, dim) float32 centroids: embedding_sum / clamp(cluster_usage, min=eps)[:, None]."""
        return self.embedding_sum.float() / self.cluster_usage.float().clamp(min=self.eps)[:, None]

    def _check_vectors(self, where: str, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{where}: x must be a floating torch tensor (N, {self.dim}), got {getattr(x, 'dtype', x)}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{where}: x must be (N, {self.dim}), got shape {tuple(x.shape)}")
        return x

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, dim) -> (N, bins) float32 Euclidean distances to every centroid.

        sqrt(clamp(|x|^2 - 2 x.e + |e|^2, min=0)), the three terms summed by one matmul of augmented vectors
        ([-2x, |x|^2, 1] . [e, 1, |e|^2]): torch.cdist's formula for p=2 when N or bins exceeds 25 (kyutai's
        `_quantize`; equal to it bit for bit on CPU), used here for every N so that codes never depend on the batch
        size (cdist computes the difference directly when N and bins are both <= 25).
        """
        x = self._check_vectors("Codebook.distances", x).float()
        e = self.embedding()
        x_aug = torch.cat([-2 * x, x.pow(2).sum(-1, keepdim=True), torch.ones_like(x[:, :1])], dim=-1)
        e_aug = torch.cat([e, torch.ones_like(e[:, :1]), e.pow(2).sum(-1, keepdim=True)], dim=-1)
        return (x_aug @ e_aug.T).clamp(min=0).sqrt()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, dim) -> (N,) int64: the nearest centroid (the first one on ties)."""
        return self.distances(x).argmin(dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (...) in [0, bins) -> (..., dim) float32 centroids."""
        codes = _check_codes("Codebook.decode", codes, self.bins, "(...)")
        return F.embedding(codes, self.embedding())


class ResidualVQ(nn.Module):
    """input_proj (dim, input_dim) and output_proj (input_dim, dim), bias-free PointwiseProjections (kyutai's 1x1
    Conv1d weights with the kernel axis squeezed), around n_q residual codebooks."""

    def __init__(
        self, input_dim: int, dim: int, bins: int, n_q: int, *, eps: float, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        self.input_dim, self.dim, self.bins, self.n_q = input_dim, dim, bins, n_q
        self.input_proj = PointwiseProjection(input_dim, dim, dtype=dtype)
        self.output_proj = PointwiseProjection(dim, input_dim, dtype=dtype)
        self.codebooks = nn.ModuleList([Codebook(dim, bins, eps=eps, dtype=dtype) for _ in range(n_q)])

    def encode(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """x (B, input_dim, T), n in [0, n_q] -> codes (B, n, T) int64.

        The projected latent (rounded to the module dtype, then float32) is quantized by codebook 0, the residual by
        codebook 1, and so on: residual -= decode(codes) after each.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.n_q:
            raise ValueError(f"ResidualVQ.encode: n must be an int in [0, {self.n_q}], got {n!r}")
        projected = self.input_proj(x)
        batch, _, length = projected.shape
        residual = projected.float().transpose(1, 2).reshape(batch * length, self.dim)
        codes = []
        for codebook in self.codebooks[:n]:
            c = codebook.encode(residual)
            residual = residual - codebook.decode(c)
            codes.append(c.view(batch, length))
        if not codes:
            return torch.zeros(batch, 0, length, dtype=torch.long)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, n, T), 1 <= n <= n_q -> (B, input_dim, T): the float32 sum of the centroids, rounded to the module
        dtype, through output_proj."""
        codes = _check_codes("ResidualVQ.decode", codes, self.bins, f"(B, n <= {self.n_q}, T)")
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.n_q:
            raise ValueError(f"ResidualVQ.decode: codes must be (B, 1..{self.n_q}, T), got shape {tuple(codes.shape)}")
        quantized = self.codebooks[0].decode(codes[:, 0])
        for k in range(1, codes.shape[1]):
            quantized = quantized + self.codebooks[k].decode(codes[:, k])
        return self.output_proj(quantized.to(self.output_proj.weight.dtype).transpose(1, 2))


class SplitResidualVQ(nn.Module):
    """`semantic` (n_q_semantic codebooks) and `acoustic` (n_q - n_q_semantic) ResidualVQs quantizing the same latent.

    encode(x, k) = cat(semantic.encode(x, n_sem), acoustic.encode(x, k - n_sem)) (not a residual across the two);
    decode(codes) = semantic.decode(codes[:, :n_sem]) + acoustic.decode(codes[:, n_sem:]) (acoustic when K > n_sem).
    """

    def __init__(self, cfg: MimiConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(cfg, MimiConfig):
            raise TypeError(f"SplitResidualVQ: cfg must be a MimiConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        d, eps = cfg.dim, cfg.codebook_eps
        self.semantic = ResidualVQ(d, cfg.codebook_dim, cfg.bins, cfg.n_q_semantic, eps=eps, dtype=dtype)
        self.acoustic = ResidualVQ(d, cfg.codebook_dim, cfg.bins, cfg.n_q_acoustic, eps=eps, dtype=dtype)

    def encode(self, x: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """x (B, D, T) latent -> codes (B, num_codebooks, T) int64, n_q_semantic <= num_codebooks <= n_q."""
        cfg = self.cfg
        if isinstance(num_codebooks, bool) or not isinstance(num_codebooks, int):
            raise TypeError(f"SplitResidualVQ.encode: num_codebooks must be an int, got {num_codebooks!r}")
        if not cfg.n_q_semantic <= num_codebooks <= cfg.n_q:
            raise ValueError(
                f"SplitResidualVQ.encode: num_codebooks must be in [n_q_semantic {cfg.n_q_semantic}, n_q {cfg.n_q}], "
                f"got {num_codebooks}"
            )
        codes = self.semantic.encode(x, cfg.n_q_semantic)
        if num_codebooks > cfg.n_q_semantic:
            codes = torch.cat([codes, self.acoustic.encode(x, num_codebooks - cfg.n_q_semantic)], dim=1)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, T), n_q_semantic <= K <= n_q, in [0, bins) -> latent (B, D, T)."""
        cfg = self.cfg
        codes = _check_codes("SplitResidualVQ.decode", codes, cfg.bins, f"(B, K <= {cfg.n_q}, T)")
        if codes.dim() != 3 or not cfg.n_q_semantic <= codes.shape[1] <= cfg.n_q:
            raise ValueError(
                f"SplitResidualVQ.decode: codes must be (B, K, T) with n_q_semantic {cfg.n_q_semantic} <= K <= n_q "
                f"{cfg.n_q}, got shape {tuple(codes.shape)}"
            )
        n_sem = cfg.n_q_semantic
        out = self.semantic.decode(codes[:, :n_sem])
        if codes.shape[1] > n_sem:
            out = out + self.acoustic.decode(codes[:, n_sem:])
        return out
