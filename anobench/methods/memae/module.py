"""Lightning side of MemAE: loss = reconstruction MSE + α · entropy of the shrunk addressing weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anobench.methods.base import AnomalyModule, OptimizerFactory
from anobench.methods.memae.torch_model import MemAEModel, addressing_entropy, dead_fraction
from anobench.methods.registry import register_method


@register_method("memae")
class MemAE(AnomalyModule):
    """MemAE (Gong et al., ICCV 2019). See README.md next to this file."""

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 256),
        memory_size: int = 2000,
        shrink_threshold: float = 0.0005,
        entropy_weight: float = 0.0002,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.entropy_weight = entropy_weight
        self.model = MemAEModel(channels=channels, memory_size=memory_size, shrink_threshold=shrink_threshold)

    def compute_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for one batch of [0, 1] images; 'loss' is the total the optimiser sees."""
        x, recon, weights = self.model.reconstruct(images)
        out = {"reconstruction": F.mse_loss(recon, x), "entropy": addressing_entropy(weights)}
        out["loss"] = out["reconstruction"] + self.entropy_weight * out["entropy"]
        out["active_items"] = (weights > 0).sum(dim=1).float().mean()  # sparsity diagnostic
        out["dead_positions"] = dead_fraction(weights)  # positions whose read-out is zero (README)
        return out

