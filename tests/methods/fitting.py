"""Fit-and-test on a small synthetic category, in-process: the learning tests of every method use it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning as L

from anobench.data import AnomalyDataModule

# 12 training images, 8 good + 16 defective test images (4 per defect type)
SMALL_SYNTHETIC = dict(n_train=12, n_test_good=8, n_test_per_defect=4)


def quiet_trainer(max_steps: int, callbacks=(), **overrides) -> L.Trainer:
    """A deterministic CPU Trainer for `max_steps` steps with no logger, checkpoints or progress output."""
    settings = dict(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                    callbacks=list(callbacks))
    return L.Trainer(**{**settings, **overrides})


def fit_and_test(make_module: Callable[[], L.LightningModule], root: Path, category: str, *, image_size: int,
                 max_steps: int, batch_size: int = 8, seed: int = 0, train_repeats: int = 10,
                 synthetic: dict | None = None):
    """Seed, build the module, fit it for `max_steps` on synthetic `category`, run the shared test loop.

    Returns (module, trainer, datamodule); the metrics are in ``module.test_results["metrics"]``.
    """
    L.seed_everything(seed, verbose=False)
    module = make_module()
    datamodule = AnomalyDataModule(
        dataset="synthetic", category=category, root=str(root), image_size=image_size,
        train_batch_size=batch_size, eval_batch_size=8, train_repeats=train_repeats,
        synthetic=synthetic or SMALL_SYNTHETIC,
    )
    trainer = quiet_trainer(max_steps)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == max_steps
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module, trainer, datamodule
