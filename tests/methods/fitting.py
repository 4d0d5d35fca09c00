"""The one fit-and-test helper of the tests and the one set of tiny-budget overrides.

`fit_and_test` (a module on a synthetic category, in process) and `fit_and_test_config` (a composed run
config) both fit on a quiet trainer, then run the run pipeline's own test stage
(`anobench.tasks.run.evaluate_on_test_set`), and return a `Fitted`: the module, datamodule, trainer, the
`TestOutcome` and a `FitRecord` of what the fit showed its callbacks. Tests observe a fit through
recording callbacks (`FitRecord`, or their own passed as ``callbacks``), never by replacing a hook.

The tiny budgets: `SMALL_SYNTHETIC` (the learning tests' category), `TINY` / `PER_METHOD` (the tiniest
end-to-end run as train overrides: contract tests, suites, launchers); a test adds its own deliberate
differences as explicit extra overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch

from anobench.data import AnomalyDataModule
from anobench.methods.base import AnomalyModule
from anobench.protocol import PROTOCOL
from anobench.tasks import run

# --- the tiny budgets ------------------------------------------------------------------------------
# data.synthetic sizes of the learning tests: 12 training images, 8 good + 16 defective test images (4 per type)
SMALL_SYNTHETIC = dict(n_train=12, n_test_good=8, n_test_per_defect=4)
# the tiniest category: a handful of images
TINY_SYNTHETIC = dict(n_train=6, n_test_good=3, n_test_per_defect=1)


def synthetic_overrides(sizes: dict[str, int]) -> list[str]:
    """`sizes` as train overrides of data.synthetic.*."""
    return [f"data.synthetic.{key}={value}" for key, value in sizes.items()]


# The tiniest end-to-end run: trainer=smoke (2 steps), batches of 4, TINY_SYNTHETIC (data=synthetic/<category>
# is the test's choice)
TINY = ["trainer=smoke", "method.input.batch_size=4", "method.input.eval_batch_size=4",
        *synthetic_overrides(TINY_SYNTHETIC)]
# What a method needs on top to stay tiny: Uninformed Students distils its default (efficientnet_lite0) teacher
PER_METHOD = {"uninformed_students": ["method.module.teacher.steps=2", "method.module.teacher.batch_size=4"]}


def tiny_overrides(method: str) -> list[str]:
    """Train overrides of the tiniest run of `method`."""
    return [f"method={method}", *TINY, *PER_METHOD.get(method, [])]


def tiny_suite_overrides(*extra: str) -> str:
    """TINY as a suite's ``overrides=[...]`` entry (every job of the suite), plus `extra`."""
    return f"overrides=[{','.join([*TINY, *extra])}]"


# --- trainers and data -----------------------------------------------------------------------------
def quiet_trainer(max_steps: int, callbacks: Sequence[L.Callback] = (), **overrides: Any) -> L.Trainer:
    """A deterministic CPU Trainer for `max_steps` steps with no logger, checkpoints or progress output."""
    settings = dict(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                    callbacks=list(callbacks))
    return L.Trainer(**{**settings, **overrides})


def synthetic_datamodule(root: Path | str, category: str, *, image_size: int, batch_size: int = 8,
                         eval_batch_size: int = 8, train_repeats: int = 10, seed: int = 0,
                         synthetic: dict | None = None, **kwargs: Any) -> AnomalyDataModule:
    """A synthetic category (default sizes `SMALL_SYNTHETIC`) under `root`."""
    return AnomalyDataModule(dataset="synthetic", category=category, root=str(root), image_size=image_size,
                             train_batch_size=batch_size, eval_batch_size=eval_batch_size,
                             train_repeats=train_repeats, seed=seed, synthetic=dict(synthetic or SMALL_SYNTHETIC),
                             **kwargs)


# --- fit and test ----------------------------------------------------------------------------------
class FitRecord(L.Callback):
    """What a fit shows its callbacks: the parameters it starts from, the keys of every training batch and
    the metrics logged by its end (the test stage starts a new run, which clears them on the trainer)."""

    def __init__(self) -> None:
        self.initial_parameters: dict[str, torch.Tensor] = {}
        self.batch_keys: list[set[str]] = []
        self.logged: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial_parameters = {name: p.detach().clone() for name, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batch_keys.append(set(batch))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.logged = dict(trainer.callback_metrics)

    def changed(self, module: L.LightningModule, prefix: str = "") -> bool:
        """Whether the fit changed any parameter whose name starts with `prefix` (e.g. "model.")."""
        now = dict(module.named_parameters())
        return any(not torch.equal(before, now[name]) for name, before in self.initial_parameters.items()
                   if name.startswith(prefix))


@dataclass
class Fitted:
    """A fitted module, its data and trainer, the test stage's outcome and the record of the fit."""

    module: AnomalyModule
    datamodule: AnomalyDataModule
    trainer: L.Trainer
    outcome: run.TestOutcome
    fit: FitRecord = field(default_factory=FitRecord)

    @property
    def metrics(self) -> dict[str, float]:
        return self.outcome.metrics


# the MVTec AD protocol's evaluation settings (conf/train.yaml's defaults)
PROTOCOL_EVALUATION = run.EvaluationSettings(PROTOCOL["resolution"], PROTOCOL["pro_fpr_limit"])


def fit_and_test(make_module: Callable[[], AnomalyModule], datamodule: AnomalyDataModule, *, max_steps: int,
                 seed: int = 0, callbacks: Sequence[L.Callback] = ()) -> Fitted:
    """Seed, build the module, fit it for exactly `max_steps` on a quiet CPU trainer, run the test stage."""
    L.seed_everything(seed, verbose=False)
    module = make_module()
    record = FitRecord()
    trainer = quiet_trainer(max_steps, [record, *callbacks])
    trainer.fit(module, datamodule=datamodule)
    outcome = run.evaluate_on_test_set(module, datamodule, PROTOCOL_EVALUATION, trainer)
    fitted = Fitted(module=module, datamodule=datamodule, trainer=trainer, outcome=outcome, fit=record)
    assert trainer.global_step == max_steps, (trainer.global_step, max_steps)
    return fitted


def fit_and_test_config(cfg: Any, run_dir: Path, callbacks: Sequence[L.Callback] = ()) -> Fitted:
    """Build a composed run config as the pipeline does (`run.build`), fit it on its own trainer config
    (quiet: no logger, no progress bar), run the test stage with the config's evaluation settings."""
    record = FitRecord()
    built, trainer, outcome = run.fit_and_evaluate(cfg, run_dir, [record, *callbacks])
    return Fitted(module=built.module, datamodule=built.datamodule, trainer=trainer, outcome=outcome, fit=record)
