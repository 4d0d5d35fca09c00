"""Score helpers shared by the reconstruction methods."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reconstruction_error_map(images: torch.Tensor, reconstructions: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Per-pixel residual across channels: B×C×H×W → B×H×W.

    squared=False: the L2 norm of the residual (MemAE's official test script); squared=True: the sum
    of squared channel residuals, i.e. the per-pixel term of the MSE the methods train on.
    """
    err = (reconstructions - images).pow(2).sum(dim=1)
    return err if squared else err.sqrt()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of B×H×W maps (kernel radius ⌈3σ⌉, reflect padding); σ ≤ 0: unchanged."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    if radius >= min(maps.shape[-2:]):
        radius = min(maps.shape[-2:]) - 1
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)
