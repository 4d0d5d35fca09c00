"""A trained module scoring images outside the test set exactly as the test stage scores the test images.

The test stage (`anobench.tasks.run.evaluate_on_test_set`, Lightning's test loop) puts the module in eval mode,
rebuilds its inference state from the training images (`AnomalyModule.prepare_inference` on
``inference_train_dataloader()``: Patch SVDD's bank, MNAD's memory and scales, Uninformed Students' statistics,
...), then runs ``module.model(images)`` batch by batch under the trainer's precision context, without
gradients. `Inference` does the same steps outside the loop, on the same device and precision, so that the
held-out normal images (decision thresholds) and `anobench predict`'s images get the scores the test stage
would give them; image scores are then combined with the test set's `score_reference`
(`AnomalyModule.finalize_scores`).
"""

from __future__ import annotations

from typing import Any, Iterable

import lightning as L
import numpy as np
import torch

from anobench.data.datamodule import AnomalyDataModule
from anobench.errors import DataError
from anobench.methods.base import AnomalyModule, AnomalyOutput, stack_scores


class Inference:
    """`module`, with its inference state rebuilt from `datamodule`'s training images, on `trainer`'s device and
    precision (a one-process testing trainer: `anobench.tasks.run.testing_trainer`)."""

    def __init__(self, module: AnomalyModule, datamodule: AnomalyDataModule, trainer: L.Trainer) -> None:
        self.module = module
        self.device = trainer.strategy.root_device
        self.precision = trainer.precision_plugin
        module.to(self.device)
        module.eval()
        try:
            loader = datamodule.inference_train_dataloader()
            with torch.inference_mode():
                module.prepare_inference(loader)
        except DataError as error:
            raise DataError(f"{error}. Scoring new images rebuilds the run's inference state (memory banks, "
                            "statistics) from its training images, so they must be readable: pass data_root=... "
                            "where they moved") from None

    def __call__(self, images: torch.Tensor) -> AnomalyOutput:
        """A batch of [0, 1] images (B×3×S×S, the datamodule's conversion) → the model's output on the CPU (float)."""
        with torch.inference_mode(), self.precision.test_step_context():
            out = self.module.model(images.to(self.device))
        return out.on_cpu()

    def image_scores(self, outputs: Iterable[AnomalyOutput], reference: dict[str, float]) -> np.ndarray:
        """The image scores of `outputs` (in order), combined with a test set's score reference as the test stage
        combines them (`AnomalyModule.finalize_scores`), float64."""
        outputs = list(outputs)
        if not outputs:
            return np.zeros(0)
        scores, parts = stack_scores(outputs)
        return np.asarray(self.module.finalize_scores(scores, parts, dict(reference or {})), dtype=np.float64)


def score_loader(inference: Inference, loader: Iterable[dict[str, Any]], reference: dict[str, float]
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """Maps (model resolution) and image scores of every image of a datamodule-style loader, in order."""
    outputs = [inference(batch["image"]) for batch in loader]
    maps = [m for o in outputs for m in o.anomaly_map.numpy()]
    return maps, inference.image_scores(outputs, reference)
