"""Shared base for every method: the test loop, map collection and evaluation live here, once.

A method subclasses `AnomalyModule`, keeps its plain torch model in `self.model` and implements
training (``training_step``, ``configure_optimizers``). In eval mode ``self.model(images)`` must
return an `AnomalyOutput`: a B×h×w anomaly map at model resolution (higher = more anomalous) and a
B image score. Everything after that (upsampling to ground-truth size, metrics) is the evaluator's.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader


class AnomalyOutput(NamedTuple):
    """What a model returns at inference. A NamedTuple, so models stay traceable/exportable.

    ``score_parts`` (B×k, optional) carries per-image terms that a paper only combines over the whole
    test set (MNAD min-max normalises PSNR and memory distance per test video); the Lightning module
    combines them in `AnomalyModule.finalize_test_scores`. ``pred_score`` must still be a usable
    per-image score on its own.
    """

    anomaly_map: torch.Tensor  # B×h×w, higher = more anomalous
    pred_score: torch.Tensor  # B, higher = more anomalous
    score_parts: torch.Tensor | None = None  # B×k, see above


OptimizerFactory = Callable[..., torch.optim.Optimizer]


class AnomalyModule(L.LightningModule):
    """Lightning wrapper shared by all methods: owns the test loop and hands maps to the evaluator."""

    method_name: str = "base"  # set by @register_method

    def __init__(self, optimizer: OptimizerFactory | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-4)
        self.model: nn.Module
        self.evaluation_resolution = "ground_truth"
        self.pro_fpr_limit = 0.3
        self._maps: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []
        self._score_parts: list[np.ndarray] = []
        self.test_results: dict[str, Any] | None = None

    # --- hooks a method may override -------------------------------------------------------
    def prepare_inference(self, train_loader: DataLoader) -> None:
        """Build whatever inference needs from the normal training images (e.g. a memory bank).

        Called at the start of every test run with an un-augmented, unshuffled loader of the
        training images. Default: nothing to do.
        """

    def finalize_test_scores(self, scores: np.ndarray, score_parts: np.ndarray | None) -> np.ndarray:
        """Image scores of the whole test set, in test-sample order. Default: the per-image scores.

        Override when the paper's score is defined over the test set (e.g. min-max normalised).
        """
        return scores

    def evaluation_exclusions(self) -> list[int]:
        """Test-sample indices left out of evaluation. Default: none.

        A semi-supervised method (NBS) saw these test images with labels, so they must not be scored.
        """
        return []

    def extra_test_results(self) -> dict[str, Any]:
        """Entries added to ``test_results`` (and so to result.json's ``evaluation``). Default: none."""
        return {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    # --- training: a method with one loss per batch only writes compute_losses ------------------
    def compute_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for a batch of [0, 1] images; 'loss' is what the optimiser minimises."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_losses or training_step")

    def log_losses(self, out: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log every scalar of `out` as train/<name> ('loss' on the progress bar)."""
        for name, value in out.items():
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=batch_size)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.compute_losses(batch["image"])
        self.log_losses(out, batch_size=batch["image"].shape[0])
        return out["loss"]

    # --- shared test loop ------------------------------------------------------------------
    def on_test_start(self) -> None:
        self._maps, self._scores, self._indices, self._score_parts = [], [], [], []
        datamodule = self.trainer.datamodule
        self.prepare_inference(datamodule.inference_train_dataloader())

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self.model(batch["image"])
        self._maps.extend(output.anomaly_map.detach().float().cpu().numpy())
        self._scores.append(output.pred_score.detach().float().cpu().numpy().reshape(-1))
        self._indices.append(batch["index"].cpu().numpy().reshape(-1))
        if output.score_parts is not None:
            self._score_parts.append(output.score_parts.detach().float().cpu().numpy())

    def on_test_epoch_end(self) -> None:
        from anobench.metrics import evaluate_category

        datamodule = self.trainer.datamodule
        indices = np.concatenate(self._indices)
        order = np.argsort(indices)
        samples = datamodule.test_samples
        if len(indices) != len(samples) or not np.array_equal(indices[order], np.arange(len(samples))):
            raise RuntimeError("test loop did not see every test image exactly once")
        maps = [self._maps[i] for i in order]
        scores = np.concatenate(self._scores)[order]
        parts = np.concatenate(self._score_parts)[order] if self._score_parts else None
        scores = np.asarray(self.finalize_test_scores(scores, parts), dtype=np.float64)
        excluded = set(self.evaluation_exclusions())
        keep = [i for i in range(len(samples)) if i not in excluded]
        maps, scores = [maps[i] for i in keep], scores[keep]
        self.test_results = evaluate_category(
            anomaly_maps=maps,
            image_scores=scores,
            masks=[datamodule.load_mask(i) for i in keep],
            labels=np.array([samples[i].label for i in keep]),
            resolution=self.evaluation_resolution,
            fpr_limit=self.pro_fpr_limit,
        )
        self.test_results.update(self.extra_test_results())
        # for anobench.visualize (run figures): the evaluated samples, their maps and scores
        self.evaluated_indices, self.test_maps, self.test_scores = keep, maps, scores
        for key, value in self.test_results["metrics"].items():
            self.log(f"test/{key}", float(value))
