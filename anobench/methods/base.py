"""Shared base for every method: the test loop, map collection and evaluation live here, once.

A method subclasses `AnomalyModule`, keeps its plain torch model in `self.model` and implements
training (``training_step``, ``configure_optimizers``). In eval mode ``self.model(images)`` must
return an `AnomalyOutput`: a B×h×w anomaly map at model resolution (higher = more anomalous) and a
B image score. The test loop hands each batch's output to a `PredictionCollector` (a callback), which
assembles the whole test set's `TestPredictions`; evaluating them (upsampling to ground-truth size,
metrics) is the run pipeline's stage (anobench/tasks/run.py), not the module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from anobench.data.datamodule import AnomalyDataModule
from anobench.compat import check_lightning_version

check_lightning_version()  # an older Lightning would fail mid-training (anobench/compat.py)


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

    def on_cpu(self) -> "AnomalyOutput":
        """Detached float32 copies on the CPU: what the test loop and `anobench predict` keep of a batch."""
        parts = self.score_parts
        return AnomalyOutput(self.anomaly_map.detach().float().cpu(), self.pred_score.detach().float().cpu(),
                             None if parts is None else parts.detach().float().cpu())


def stack_scores(outputs: list[AnomalyOutput]) -> tuple[np.ndarray, np.ndarray | None]:
    """The image scores (N) and score parts (N×k, or None) of CPU outputs, concatenated in order."""
    scores = np.concatenate([o.pred_score.numpy().reshape(-1) for o in outputs])
    with_parts = [o.score_parts.numpy() for o in outputs if o.score_parts is not None]
    return scores, (np.concatenate(with_parts) if with_parts else None)


class TestBatchOutput(NamedTuple):
    """What `AnomalyModule.test_step` returns: the batch's test-sample indices and the model's output (on CPU)."""

    __test__ = False  # not a pytest test class

    indices: torch.Tensor
    output: AnomalyOutput


@dataclass
class TestPredictions:
    """Every test image's map and score, in test-sample order (index i = ``datamodule.test_samples[i]``)."""

    __test__ = False  # not a pytest test class

    maps: list[np.ndarray]  # model resolution
    scores: np.ndarray  # the method's image scores, after `AnomalyModule.finalize_test_scores`
    score_parts: np.ndarray | None  # N×k, see AnomalyOutput
    labels: np.ndarray  # 1 = defective


class PredictionCollector(L.Callback):
    """Collects the test loop's `TestBatchOutput`s (a recording callback: nothing of the module is patched)."""

    def __init__(self) -> None:
        self.batches: list[TestBatchOutput] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, TestBatchOutput):
            raise RuntimeError(f"{type(pl_module).__name__}.test_step must return a TestBatchOutput, got {type(outputs)}")
        self.batches.append(outputs)

    def predictions(self, module: "AnomalyModule", labels: np.ndarray) -> TestPredictions:
        """The collected outputs in test-sample order, with the method's test-set scores applied."""
        if not self.batches:
            raise RuntimeError("the test loop produced no batch (was trainer.test run with this collector?)")
        indices = np.concatenate([b.indices.numpy().reshape(-1) for b in self.batches])
        order = np.argsort(indices, kind="stable")
        if len(indices) != len(labels) or not np.array_equal(indices[order], np.arange(len(labels))):
            raise RuntimeError("test loop did not see every test image exactly once")
        maps = [m for b in self.batches for m in b.output.anomaly_map.numpy()]
        scores, parts = stack_scores([b.output for b in self.batches])
        scores, parts = scores[order], None if parts is None else parts[order]
        scores = np.asarray(module.finalize_test_scores(scores, parts), dtype=np.float64)
        return TestPredictions(maps=[maps[i] for i in order], scores=scores, score_parts=parts,
                               labels=np.asarray(labels))


OptimizerFactory = Callable[..., torch.optim.Optimizer]


class AnomalyModule(L.LightningModule):
    """Lightning wrapper shared by all methods: owns the test loop; `PredictionCollector` gathers its outputs."""

    method_name: str = "base"  # set by @register_method
    # "training": the test step runs in trainer.precision (Lightning's autocast wraps it); "float32": the model
    # turns autocast and TF32 off itself (Patch SVDD). docs/performance.md#precision; tests/test_precision.py
    inference_precision: str = "training"
    # None: the image score is the paper's own (pred_score); a pooling name (anobench/metrics/pooling.py): the
    # paper defines no image score and the method pools its map with that rule. Recorded as evaluation.image_score.
    image_score_pooling: str | None = None

    def __init__(self, optimizer: OptimizerFactory | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-4)
        self.model: nn.Module

    # --- hooks a method may override -------------------------------------------------------
    def prepare_inference(self, train_loader: DataLoader) -> None:
        """Build whatever inference needs from the normal training images (e.g. a memory bank).

        Called at the start of every test run with an un-augmented, unshuffled loader of the
        training images. Default: nothing to do.
        """

    def finalize_test_scores(self, scores: np.ndarray, score_parts: np.ndarray | None) -> np.ndarray:
        """Image scores of the whole test set, in test-sample order: `finalize_scores` on the test set's own
        `score_reference`. Default: the per-image scores.

        A paper whose score is defined over the test set (MNAD's min-max) overrides those two hooks, not this one.
        """
        return self.finalize_scores(scores, score_parts, self.score_reference(score_parts))

    def score_reference(self, score_parts: np.ndarray | None) -> dict[str, float]:
        """What the image score takes from the whole test set (e.g. each score part's min and max), from its
        N×k ``score_parts``. Recorded in result.json (``evaluation.score_reference``), so that `anobench predict`
        scores new images on the test set's scale. Default: nothing (the score is per image)."""
        return {}

    def finalize_scores(self, scores: np.ndarray, score_parts: np.ndarray | None,
                        reference: dict[str, float]) -> np.ndarray:
        """Image scores from per-image scores and parts and a test set's `score_reference`, image by image
        (one image or a whole test set get the same score). Default: the per-image scores."""
        return scores

    def evaluation_exclusions(self) -> list[int]:
        """Test-sample indices left out of evaluation. Default: none.

        A semi-supervised method (NBS) saw these test images with labels, so they must not be scored.
        """
        return []

    def image_score_record(self) -> str:
        """What the image score is, for result.json's evaluation.image_score."""
        if self.image_score_pooling is None:
            return "the paper's image score (method README)"
        return f"map pooling '{self.image_score_pooling}' (the paper defines no image score; docs/methods.md#image-scores-from-maps)"

    def extra_test_results(self, predictions: TestPredictions) -> dict[str, Any]:
        """Entries added to result.json's ``evaluation`` from the whole test set's predictions. Default: none."""
        return {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    # --- the data beyond batches ---------------------------------------------------------------
    def data(self) -> AnomalyDataModule:
        """The `AnomalyDataModule` of the running fit or test; a method uses only its declared interface
        (AnomalyDataModule's docstring: what a method may use beyond batches)."""
        trainer = self._trainer
        datamodule = None if trainer is None else trainer.datamodule
        if not isinstance(datamodule, AnomalyDataModule):
            given = "no Trainer" if trainer is None else f"datamodule={type(datamodule).__name__}"
            raise RuntimeError(f"method {self.method_name} ({type(self).__name__}) needs trainer.fit/test(..., "
                               f"datamodule=AnomalyDataModule(...)); got {given}")
        return datamodule

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
        self.prepare_inference(self.data().inference_train_dataloader())

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> TestBatchOutput:
        return TestBatchOutput(indices=batch["index"].detach().cpu(), output=self.model(batch["image"]).on_cpu())
