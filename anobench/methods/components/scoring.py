"""Score helpers shared by the reconstruction methods."""

from __future__ import annotations

import torch

from anobench.metrics.pooling import gaussian_blur  # noqa: F401 - the one Gaussian smoothing, re-exported for methods


def reconstruction_error_map(images: torch.Tensor, reconstructions: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Per-pixel residual across channels: B×C×H×W → B×H×W.

    squared=False: the L2 norm of the residual (MemAE's official test script); squared=True: the sum
    of squared channel residuals, i.e. the per-pixel term of the MSE the methods train on.
    """
    err = (reconstructions - images).pow(2).sum(dim=1)
    return err if squared else err.sqrt()
