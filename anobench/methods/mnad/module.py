"""Lightning side of MNAD (reconstruction): losses, the memory update per step, the test-set score.

loss = MSE(reconstruction, input) + λc · compactness + λs · separateness; after each step the memory
buffer is replaced by the update rule's result (no gradient ever reaches it). At test time the
image score is the paper's: normality = α·minmax(PSNR) + (1 − α)·(1 − minmax(compactness distance)),
min-max over the test set (the paper: over each test video), and our anomaly score is 1 − normality.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from anobench.methods.base import AnomalyModule, OptimizerFactory
from anobench.methods.mnad.torch_model import MNADModel, feature_losses
from anobench.methods.registry import register_method


def min_max(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Scale to [0, 1] over the array, as the official anomaly_score_list, or by a test set's recorded `low` and
    `high` (anobench predict; in the array's dtype, so the test set's own values give the same numbers); all
    zeros when the range is empty."""
    low = values.min() if low is None else values.dtype.type(low)
    high = values.max() if high is None else values.dtype.type(high)
    span = high - low
    return (values - low) / span if span > 0 else np.zeros_like(values)


@register_method("mnad")
class MNAD(AnomalyModule):
    """MNAD, reconstruction variant (Park et al., CVPR 2020). See README.md next to this file."""

    def __init__(
        self,
        width: int = 64,
        memory_size: int = 10,
        compactness_weight: float = 0.01,
        separateness_weight: float = 0.01,
        alpha: float = 0.7,
        update_threshold: float = 0.015,
        test_time_update: bool = True,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.compactness_weight = compactness_weight
        self.separateness_weight = separateness_weight
        self.model = MNADModel(width=width, memory_size=memory_size, alpha=alpha,
                               update_threshold=update_threshold, test_time_update=test_time_update)

    def compute_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for a batch of [0, 1] images, plus 'new_memory' (the updated items, not yet stored)."""
        out = self.model.forward_train(images)
        compactness, separateness = feature_losses(out["queries"], self.model.memory)
        reconstruction = F.mse_loss(out["reconstruction"], out["input"])
        loss = reconstruction + self.compactness_weight * compactness + self.separateness_weight * separateness
        return {"loss": loss, "reconstruction": reconstruction, "compactness": compactness,
                "separateness": separateness, "new_memory": out["new_memory"]}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.compute_losses(batch["image"])
        self.model.memory.copy_(out.pop("new_memory"))  # the update rule, never the optimiser
        self.log_losses(out, batch_size=batch["image"].shape[0])
        return out["loss"]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.trainer is None or not self.trainer.max_epochs or self.trainer.max_epochs < 0:
            return optimizer
        # official Train.py: cosine annealing over the epochs (T_max = epochs)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    @torch.no_grad()
    def prepare_inference(self, train_loader: DataLoader) -> None:
        """Reset the test memory to the trained one; measure the training-set scale of both map terms."""
        model = self.model
        model.reset_test_memory()  # first: the scales are measured with the trained memory, not a previous test run's
        update, model.test_time_update = model.test_time_update, False
        errors, distances = [], []
        try:
            for batch in train_loader:
                error, distance = model.score_terms(batch["image"].to(model.memory.device))
                errors.append(error.mean().item())
                distances.append(distance.mean().item())
        finally:
            model.test_time_update = update
        model.error_scale.fill_(max(float(np.mean(errors)), 1e-12))
        model.distance_scale.fill_(max(float(np.mean(distances)), 1e-12))

    def score_reference(self, score_parts: np.ndarray | None) -> dict[str, float]:
        """The test set's min and max of PSNR and of the compactness distance (the min-max of the score)."""
        if score_parts is None:
            return {}
        psnr, distance = score_parts[:, 0], score_parts[:, 1]
        return {"psnr_min": float(psnr.min()), "psnr_max": float(psnr.max()),
                "distance_min": float(distance.min()), "distance_max": float(distance.max())}

    def finalize_scores(self, scores: np.ndarray, score_parts: np.ndarray | None,
                        reference: dict[str, float]) -> np.ndarray:
        """1 − [α·minmax(PSNR) + (1 − α)·(1 − minmax(compactness distance))], min-max by the test set's `reference`
        (over the test set itself in the test stage; the recorded one for `anobench predict`)."""
        if score_parts is None or not reference:
            return scores
        alpha = self.model.alpha
        psnr = min_max(score_parts[:, 0], reference["psnr_min"], reference["psnr_max"])
        distance = min_max(score_parts[:, 1], reference["distance_min"], reference["distance_max"])
        return 1 - (alpha * psnr + (1 - alpha) * (1 - distance))
