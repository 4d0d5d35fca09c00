"""MemAE networks (Gong et al., ICCV 2019) as plain torch modules — no Lightning here.

encoder → memory addressing at every spatial position → decoder. The memory module follows the
official `models/memory_module.py`: N learnable items (N×C, uniform ±1/√C init), addressing weights
w = softmax_i(z·m_i), hard shrinkage in the paper's continuous ReLU form
ŵ_i = ReLU(w_i − λ)·w_i / (|w_i − λ| + ε), L1 re-normalisation, read-out ẑ = ŵ·M.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anobench.methods.base import AnomalyOutput
from anobench.methods.components import ConvDecoder, ConvEncoder, reconstruction_error_map

SHRINK_EPS = 1e-12  # ε of the official hard-shrink ReLU


def hard_shrink_relu(weights: torch.Tensor, threshold: float, eps: float = SHRINK_EPS) -> torch.Tensor:
    """Continuous hard shrinkage: w where w > λ, else 0 (differentiable almost everywhere)."""
    return F.relu(weights - threshold) * weights / ((weights - threshold).abs() + eps)


def addressing_entropy(weights: torch.Tensor, eps: float = SHRINK_EPS) -> torch.Tensor:
    """Mean over positions of −Σ_i ŵ_i log ŵ_i (the paper's sparsity term on the shrunk weights)."""
    return -(weights * torch.log(weights + eps)).sum(dim=1).mean()


def dead_fraction(weights: torch.Tensor) -> torch.Tensor:
    """Fraction of positions (rows of P×N shrunk weights) whose every weight was cut: their read-out is 0.

    With λ ≤ 1/N no row can die (the largest of N softmax weights is ≥ 1/N); with λ above the largest
    weight the decoder receives zeros there and decodes the same image whatever the input.
    """
    return (weights.sum(dim=1) == 0).float().mean()


class MemoryModule(nn.Module):
    """N learnable memory items read by attention with hard shrinkage, at every position of a C×H×W map."""

    def __init__(self, num_items: int, dim: int, shrink_threshold: float) -> None:
        super().__init__()
        if num_items < 1 or dim < 1:
            raise ValueError(f"memory needs num_items >= 1 and dim >= 1, got {num_items}, {dim}")
        if not 0.0 <= shrink_threshold < 1.0:
            raise ValueError(f"shrink_threshold must be in [0, 1), got {shrink_threshold}")
        self.shrink_threshold = shrink_threshold
        bound = 1.0 / math.sqrt(dim)
        self.items = nn.Parameter(torch.empty(num_items, dim).uniform_(-bound, bound))

    def address(self, codes: torch.Tensor) -> torch.Tensor:
        """Addressing weights (P×N) for P codes (P×C): softmax, shrinkage, L1 re-normalisation."""
        weights = torch.softmax(codes @ self.items.t(), dim=1)
        if self.shrink_threshold > 0:
            weights = F.normalize(hard_shrink_relu(weights, self.shrink_threshold), p=1, dim=1)
        return weights

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×C×H×W → (read-out B×C×H×W, addressing weights (B·H·W)×N)."""
        b, c, h, w = features.shape
        codes = features.permute(0, 2, 3, 1).reshape(-1, c)
        weights = self.address(codes)
        read = (weights @ self.items).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return read, weights


class MemAEModel(nn.Module):
    """Conv encoder (stride 2, BN + ReLU) → memory → mirrored transposed-conv decoder (linear output).

    Inputs are [0, 1] images; like the official code the network sees them normalised to mean 0.5,
    std 0.5 ([-1, 1]) and reconstructs in that space. Eval mode returns the per-pixel L2 norm of
    the residual (official test script) as the map and its mean over pixels as the image score.
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 256),
        memory_size: int = 2000,
        shrink_threshold: float = 0.0005,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        self.encoder = ConvEncoder(in_channels, channels, kernel_size=3, stride=2, batch_norm=True, act="relu")
        self.memory = MemoryModule(memory_size, channels[-1], shrink_threshold)
        self.decoder = ConvDecoder(channels[-1], channels[-2::-1], in_channels, kernel_size=3, stride=2,
                                   batch_norm=True, act="relu", output_act=None)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0

    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised input, reconstruction, addressing weights) for [0, 1] images."""
        size = images.shape[-1]
        if images.shape[-2] % self.encoder.downsampling or size % self.encoder.downsampling:
            raise ValueError(f"MemAE needs image sides divisible by {self.encoder.downsampling}, "
                             f"got {tuple(images.shape[-2:])}; set method.input.image_size accordingly")
        x = self.normalize(images)
        read, weights = self.memory(self.encoder(x))
        return x, self.decoder(read), weights

    def forward(self, images: torch.Tensor):
        x, recon, weights = self.reconstruct(images)
        if self.training:
            return recon, weights
        error = reconstruction_error_map(x, recon)
        return AnomalyOutput(anomaly_map=error, pred_score=error.flatten(1).mean(dim=1))
