"""Lightning side of GradCon: reconstruction + gradient-constraint loss, reference-gradient updates.

Training step (official ae_grad_reg.train):

    L = MSE(x̂, x) + β · L_grad,   L_grad = −mean_l cos(∂MSE/∂W_l, ref_l)   (β = 0.03)

with ∂MSE/∂W_l taken with create_graph (so L_grad is differentiated through the gradient) and
L_grad = 0 while no reference exists (the first step: the cosine with a zero reference is 0). After every
backward — once a 16-mixed grad scaler has unscaled it, before the optimiser step — the reference of each
decoder layer absorbs that step's `W_l.grad` — the gradient of the *total* loss, as in the official
code — into its running mean (`GradConModel.update_reference`; a non-finite step is skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from anobench.methods.base import AnomalyModule, OptimizerFactory, TestPredictions
from anobench.methods.gradcon.torch_model import PAPER_CHANNELS, GradConModel
from anobench.methods.registry import register_method


@register_method("gradcon")
class GradCon(AnomalyModule):
    """GradCon (Kwon et al., ECCV 2020). See README.md next to this file."""

    def __init__(
        self,
        channels: Sequence[int] = PAPER_CHANNELS,
        grad_loss_weight: float = 0.03,
        score_grad_weight: float = 0.12,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer or partial(torch.optim.Adam, lr=1e-3))  # official: Adam, lr 1e-3
        self.save_hyperparameters(ignore=["optimizer"])
        self.grad_loss_weight = float(grad_loss_weight)
        self.model = GradConModel(in_channels=3, channels=channels, score_grad_weight=score_grad_weight)

    def compute_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """All loss terms for one batch of [0, 1] images (B×3×H×W); 'loss' is the total."""
        recon_loss = F.mse_loss(self.model.reconstruct(images), images)
        if self.grad_loss_weight != 0:
            # no `has_reference` test here (a host sync every step): before the first update the references
            # are zero, and the cosine with a zero reference is 0 with a zero gradient (gradient_cosine)
            grads = torch.autograd.grad(recon_loss, self.model.constrained_weights(), create_graph=True)
            grad_loss = -self.model.gradient_cosines(grads).mean()
        else:
            grad_loss = recon_loss.new_zeros(())
        return {
            "loss": recon_loss + self.grad_loss_weight * grad_loss,
            "recon_loss": recon_loss,
            "grad_loss": grad_loss,
        }


    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Fold this step's decoder-weight gradients into the reference (official: after backward, before step).

        Here, not in on_after_backward: under 16-mixed Lightning unscales the gradients just before this hook,
        so the reference averages true gradients, and `update_reference` skips the overflow steps the scaler
        skips (one inf folded in would poison the running mean for good)."""
        grads = [w.grad for w in self.model.constrained_weights()]
        if any(g is None for g in grads):
            raise RuntimeError("GradCon: a decoder weight has no gradient after backward")
        self.model.update_reference(grads)

    # --- the two parts of the score, each evaluated alone (README "Score parts") ---------------------
    def extra_test_results(self, predictions: TestPredictions) -> dict[str, Any]:
        """evaluation.score_parts: image AUROC of the MSE alone and of −cos alone (higher = anomalous)."""
        from anobench.metrics.auroc import image_auroc

        parts, labels = predictions.score_parts, predictions.labels
        if parts is None:
            return {}
        mse, cos = parts[:, 0].astype(np.float64), parts[:, 1].astype(np.float64)
        weight = self.model.score_grad_weight
        return {"score_parts": {
            "score": "mse - score_grad_weight * mean_cos",
            "score_grad_weight": float(weight),
            "reconstruction_mse": {"image_auroc": image_auroc(mse, labels), "mean": float(mse.mean()),
                                   "std": float(mse.std())},
            "gradient_neg_cos": {"image_auroc": image_auroc(-cos, labels), "mean": float(-cos.mean()),
                                 "std": float(cos.std()), "weighted_std": float(weight * cos.std())},
        }}
