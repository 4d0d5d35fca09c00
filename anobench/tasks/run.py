"""One run of a method on a category, stage by stage; every verb (train, eval, bench jobs) is a thin layer over it.

    build   config -> datamodule, module (seeded; threads and allocator set first)      `build`
    fit     Lightning fit (+ step checkpoints), the checkpoint                          `fit`
    load    or: the weights of a trained run's checkpoint                               `load_weights`
    test    the shared test loop -> `TestOutcome` (maps, scores, indices, metrics,      `evaluate_on_test_set`
            curves, timings), evaluated with the `EvaluationSettings` given
    record  result.json: ok with the outcome, or failed with the error; figures         `execute`

`execute` runs the stages in that order and always writes result.json; the leaderboard is the verb's
business (anobench.tasks.publish, once per command). DDP plumbing lives in anobench.tasks.ddp.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
from omegaconf import DictConfig, OmegaConf

from anobench.allocator import keep_freed_memory
from anobench.config import COMMAND_ENV, JOB_LOG_ENV, TRAINER_OWN_KEYS, dataset_label, is_smoke
from anobench.data import AnomalyDataModule
from anobench.data.mvtec import image_size
from anobench.errors import ConfigError
from anobench.methods.base import AnomalyModule, PredictionCollector, TestPredictions
from anobench.metrics.evaluate import CategoryEvaluation, evaluate_category
from anobench.precision import float32_settings
from anobench.protocol import EVALUATION_RESOLUTIONS
from anobench.quiet import quiet_third_party
from anobench.results.export import MAPS_DIR, export_maps
from anobench.results.identity import config_hash
from anobench.results.portable import portable_command, portable_config, portable_path
from anobench.results.record import (
    device_info, failure_info, git_sha, library_versions, now_iso, peak_memory, reset_peak_memory, write_result,
)
from anobench.tasks import ddp
from anobench.tasks.thresholds import (
    HoldoutScores, ThresholdSetting, decision_thresholds, pixel_threshold, score_holdout, threshold_label,
    thresholds_record,
)
from anobench.visualize.task import VisualizeSettings, record_figures

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


# ------------------------------------------------------------------------------------------ build
@dataclass(frozen=True)
class EvaluationSettings:
    """How the test stage evaluates (conf/train.yaml `evaluation`): an input of the pipeline, never module state."""

    resolution: str
    pro_fpr_limit: float

    def __post_init__(self) -> None:
        if self.resolution not in EVALUATION_RESOLUTIONS:
            raise ConfigError(f"evaluation.resolution={self.resolution!r} is invalid; expected one of "
                              f"{', '.join(EVALUATION_RESOLUTIONS)}")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "EvaluationSettings":
        return cls(str(cfg.evaluation.resolution), float(cfg.evaluation.pro_fpr_limit))


@dataclass
class BuiltRun:
    """The run's datamodule and method, built from its config."""

    cfg: DictConfig
    datamodule: AnomalyDataModule
    module: AnomalyModule


def apply_torch_threads(cfg: DictConfig) -> None:
    """Set `torch_threads` (when given) before anything is computed or recorded: float reductions, hence
    the numbers, depend on it, and result.json's device.torch_threads must say what the run used."""
    if cfg.get("torch_threads"):
        import torch

        torch.set_num_threads(int(cfg.torch_threads))


def build(cfg: DictConfig) -> BuiltRun:
    """Seed, then build the datamodule and the method from a run config."""
    from hydra.utils import instantiate

    quiet_third_party()
    apply_torch_threads(cfg)
    if cfg.get("malloc_keep_freed", True):
        keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.method.module, _convert_="all")
    return BuiltRun(cfg=cfg, datamodule=datamodule, module=module)


def build_trainer(trainer_cfg: DictConfig, run_dir: Path, **overrides: Any) -> L.Trainer:
    """Instantiate lightning.Trainer from conf/trainer/<name>.yaml (minus anobench's own keys)."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    quiet_third_party()
    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True)
    for key in TRAINER_OWN_KEYS:
        kwargs.pop(key, None)
    kwargs.setdefault("logger", CSVLogger(save_dir=str(run_dir), name="logs", version=""))
    kwargs["default_root_dir"] = str(run_dir)
    kwargs.update(overrides)
    return instantiate(kwargs)


# -------------------------------------------------------------------------------------------- fit
class StepCheckpoints(L.Callback):
    """Save ``<run dir>/checkpoints/step<N>.ckpt`` when training reaches each of `steps` (config `checkpoint_steps`).

    One run then yields the models of several smaller budgets (scripts/learning_curves.py evaluates them):
    the weights at step N are those of a run with ``max_steps=N`` and the same seed, as long as nothing in
    the method depends on ``max_steps`` itself (OGNet's phase split and NBS's end-of-fit predictor refit do).
    """

    def __init__(self, run_dir: Path, steps: list[int]) -> None:
        self.directory = run_dir / CHECKPOINT_DIR
        self.steps = sorted({int(s) for s in steps})
        if any(s < 1 for s in self.steps):
            raise ConfigError(f"checkpoint_steps: expected positive step counts, got {list(steps)}")
        # Steps saved by this fit, in memory: the save is collective under DDP, so every rank must decide alike;
        # a filesystem check would let a slower rank see rank 0's file, skip the save and its barrier, and hang.
        # (global_step stays put over the batches of one step under gradient accumulation or manual optimisation.)
        self.saved: set[int] = set()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self.saved:
            self.saved.add(step)
            trainer.save_checkpoint(self.directory / f"step{step}.ckpt", weights_only=False)


def fit_callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    """The callbacks of a training fit, the same on every process of a DDP run (a checkpoint save is collective)."""
    steps = list(cfg.get("checkpoint_steps") or [])
    return [StepCheckpoints(run_dir, steps)] if steps else []


def fit(run: BuiltRun, run_dir: Path) -> tuple[L.Trainer, float]:
    """Fit the method (every DDP rank runs this); returns the trainer and the seconds it took."""
    ddp.check_slurm_tasks(run.cfg.trainer)
    trainer = build_trainer(run.cfg.trainer, run_dir, callbacks=fit_callbacks(run.cfg, run_dir))
    start = time.perf_counter()
    trainer.fit(run.module, datamodule=run.datamodule)
    return trainer, time.perf_counter() - start


def save_checkpoint(trainer: L.Trainer, run_dir: Path) -> Path:
    """The full training state as <run dir>/checkpoints/last.ckpt (collective under DDP; rank 0 writes)."""
    path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    trainer.save_checkpoint(path, weights_only=False)
    return path


def load_weights(module: AnomalyModule, checkpoint: Path) -> int | None:
    """Load a trained run's weights into `module`; returns the checkpoint's global step (None if unknown)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    step = state.get("global_step")
    return None if step is None else int(step)


def fit_as_worker(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """A non-zero rank of a DDP run: take part in the fit and the collective checkpoint save, write nothing."""
    run = build(cfg)
    trainer, _ = fit(run, run_dir)
    if cfg.get("save_checkpoint", True):
        save_checkpoint(trainer, run_dir)
    ddp.leave_process_group()  # with rank 0, which then tests alone; this process is done
    return {"status": "worker", "rank": trainer.global_rank}


# ------------------------------------------------------------------------------------------- test
@dataclass
class TestOutcome:
    """The test stage's result: what the evaluator, the figures and the record read."""

    __test__ = False  # not a pytest test class

    predictions: TestPredictions  # every test image, in test-sample order
    indices: list[int]  # the evaluated test samples (a semi-supervised method's labelled images left out)
    evaluation: CategoryEvaluation  # metrics and curves of the evaluated samples
    extra: dict[str, Any] = field(default_factory=dict)  # the method's own evaluation entries
    timings: dict[str, float] = field(default_factory=dict)
    holdout: HoldoutScores | None = None  # the normal images held out of training (data.holdout_normal), scored

    @property
    def maps(self) -> list[np.ndarray]:
        return [self.predictions.maps[i] for i in self.indices]

    @property
    def scores(self) -> np.ndarray:
        return self.predictions.scores[self.indices]

    @property
    def metrics(self) -> dict[str, float | None]:
        """result.json's ``metrics``: None (null) where a metric was not computed (no masks: the pixel ones)."""
        return {k: None if v is None else float(v) for k, v in self.evaluation.metrics.items()}

    def evaluation_record(self) -> dict[str, Any]:
        """result.json's ``evaluation`` block."""
        return {**self.evaluation.as_record(), **self.extra}


def evaluate_on_test_set(module: AnomalyModule, datamodule: AnomalyDataModule, settings: EvaluationSettings,
         trainer: L.Trainer) -> TestOutcome:
    """Run the shared test loop in one process and evaluate every test image not excluded by the method."""
    collector = PredictionCollector()
    trainer.callbacks.append(collector)
    start = time.perf_counter()
    try:
        trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        trainer.callbacks.remove(collector)
    inference_s = time.perf_counter() - start
    samples = datamodule.test_samples
    predictions = collector.predictions(module, np.array([s.label for s in samples]))
    excluded = set(module.evaluation_exclusions())
    indices = [i for i in range(len(samples)) if i not in excluded]
    with_masks = datamodule.has_masks
    evaluation = evaluate_category(
        anomaly_maps=[predictions.maps[i] for i in indices],
        image_scores=predictions.scores[indices],
        # no pixel ground truth (data=folder without masks): image metrics only, the pixel ones null
        masks=[datamodule.load_mask(i) for i in indices] if with_masks else None,
        labels=predictions.labels[indices],
        resolution=settings.resolution,
        fpr_limit=settings.pro_fpr_limit,
        image_sizes=None if with_masks else [image_size(samples[i].image_path)[::-1] for i in indices],
    )
    extra = {"image_score": module.image_score_record(), **module.extra_test_results(predictions)}
    reference = module.score_reference(predictions.score_parts)
    if reference:  # what the image score took from the whole test set: anobench predict scores new images with it
        extra = {**extra, "score_reference": reference}
    holdout = score_holdout(module, datamodule, trainer, reference)
    timings = {"inference_s": inference_s, **({"holdout_s": holdout.seconds} if holdout else {})}
    return TestOutcome(predictions=predictions, indices=indices, evaluation=evaluation, extra=extra,
                       timings=timings, holdout=holdout)


def fit_and_evaluate(cfg: DictConfig, run_dir: Path, callbacks: Sequence[L.Callback] = ()
                     ) -> tuple[BuiltRun, L.Trainer, TestOutcome]:
    """Build, fit on a quiet trainer (no logger, progress bar or model summary) and run the test stage, writing
    no record: the one path through the stages for measurement scripts and tests (a run is `execute`)."""
    built = build(cfg)
    trainer = build_trainer(cfg.trainer, run_dir, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(built.module, datamodule=built.datamodule)
    outcome = evaluate_on_test_set(built.module, built.datamodule, EvaluationSettings.from_config(cfg), trainer)
    return built, trainer, outcome

def testing_trainer(cfg: DictConfig, run_dir: Path, fitted: L.Trainer | None = None) -> L.Trainer:
    """The trainer the test stage runs on: the fit's own, or a one-process one (after a DDP fit, or for eval)."""
    if fitted is not None:
        overrides = ddp.single_process_overrides(fitted.world_size)
        if overrides is None:
            return fitted
        return build_trainer(cfg.trainer, run_dir, logger=False, **overrides)
    return build_trainer(cfg.trainer, run_dir, logger=False, **ddp.SINGLE_PROCESS)


# ----------------------------------------------------------------------------------------- record
def start_record(cfg: DictConfig, task: str) -> dict[str, Any]:
    """Everything that produced a run, known before it starts (paths portable: no machine's absolute path)."""
    apply_torch_threads(cfg)  # the first job of an in-process sweep would otherwise record the previous count
    ThresholdSetting.from_config(cfg)  # a bad threshold setting fails here, before any training
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {
        "task": task,
        "method": cfg.method.name,
        "dataset": dataset_label(cfg.data),  # the leaderboard section: data.name for data=folder
        "category": cfg.data.category,
        "seed": cfg.seed,
        # the pretrained network the method builds on (methods that use none: "none"); methods may
        # default to a backbone other than the paper's (see each README), so it is recorded up front
        "backbone": {"name": cfg.backbone.get("name"), "arch": cfg.backbone.get("arch"),
                     "pretrained": bool(cfg.backbone.get("pretrained"))} if cfg.get("backbone") else None,
        "status": "running",
        "started_at": now_iso(),
        "config": portable_config(cfg),
        "config_hash": config_hash(resolved),  # anobench bench resumes by it
        "git_sha": git_sha(),
        "versions": library_versions(),
        "device": device_info(cfg.trainer.get("accelerator")),
        "float32_precision": float32_settings(),  # TF32 switches (anobench/precision.py)
        "command": portable_command(os.environ.get(COMMAND_ENV), cfg),
        "budget": budget_of(cfg, None),
    }


def budget_of(cfg: DictConfig, trainer: L.Trainer | None) -> dict[str, Any]:
    """What the run was trained with; "smoke" and "reduced" results are never a paper reproduction.

    The papers' batch is method.input.batch_size in one process. DDP (and gradient accumulation) multiply it:
    each optimiser step sees world_size × accumulate × batch_size images, and an epoch-based budget then makes
    world_size times fewer steps. Such a run records its global batch and steps, and is not labelled "paper".
    """
    label = "smoke" if is_smoke(cfg) else str(cfg.get("budget_label", "reduced"))
    batch = cfg.method.input.get("batch_size")
    world_size = None if trainer is None else trainer.world_size
    accumulate = int((trainer.accumulate_grad_batches if trainer is not None else None)
                     or cfg.trainer.get("accumulate_grad_batches") or 1)
    global_batch = None if world_size is None or batch is None else int(batch) * world_size * accumulate
    if world_size is not None and world_size * accumulate > 1 and label not in ("smoke", "reduced"):
        label = f"{label} with global batch {global_batch} (not {batch})" if global_batch else \
            f"{label} with {world_size * accumulate} batches per step"
    return {
        "label": label,
        "experiment": cfg.get("experiment_name"),
        "trainer": cfg.trainer.get("name"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
        "global_step": None if trainer is None else trainer.global_step,
        "epochs_done": None if trainer is None else trainer.current_epoch,
        "train_repeats": cfg.method.input.get("train_repeats"),
        "batch_size": batch,  # per process
        "world_size": world_size,  # processes that trained (DDP)
        "accumulate_grad_batches": accumulate,
        "global_batch_size": global_batch,  # images per optimiser step, all processes together
    }


def record_outcome(record: dict[str, Any], run: BuiltRun, outcome: TestOutcome, run_dir: Path) -> None:
    """Mark `record` ok with the outcome's metrics, and write and note the run's figures."""
    cfg, datamodule = run.cfg, run.datamodule
    record.update(status="ok", metrics=outcome.metrics, evaluation=outcome.evaluation_record(),
                  n_train_images=len(datamodule.index.train), n_test_images=len(datamodule.test_samples))
    if datamodule.holdout_samples:
        record["n_holdout_images"] = len(datamodule.holdout_samples)
    thresholds = decision_thresholds(ThresholdSetting.from_config(cfg), outcome.evaluation, outcome.holdout)
    if thresholds:  # anobench predict decides with them; the panels draw the pixel one
        record["thresholds"] = thresholds_record(thresholds)
    samples = datamodule.test_samples
    get_mask = (lambda j: datamodule.load_mask(outcome.indices[j])) if datamodule.has_masks else None
    record["figures"], figures_s = record_figures(
        run_dir, VisualizeSettings.from_config(cfg), outcome.maps, outcome.scores,
        [samples[i] for i in outcome.indices], get_mask, outcome.evaluation,
        title=f"{cfg.method.name} on {dataset_label(cfg.data)}/{cfg.data.category}, seed {cfg.seed}",
        pixel_threshold=pixel_threshold(thresholds), threshold_label=threshold_label(thresholds, "pixel"))
    outcome.timings["figures_s"] = figures_s


def export_outcome_maps(cfg: DictConfig, run: BuiltRun, outcome: TestOutcome, run_dir: Path
                        ) -> tuple[dict[str, Any], float]:
    """`export.maps`: the evaluated test maps in MVTec's evaluation layout; result.json's ``export`` block."""
    start = time.perf_counter()
    out_dir = Path(cfg.export.get("dir") or run_dir / MAPS_DIR)
    samples = run.datamodule.test_samples
    folder = export_maps(out_dir, str(cfg.data.category), [samples[i] for i in outcome.indices], outcome.maps)
    block = {"maps": portable_path(folder.resolve(), cfg) if cfg.export.get("dir") else
             folder.relative_to(run_dir).as_posix(),
             "layout": "<category>/test/<defect>/<stem>.tiff, float32, ground-truth resolution (MVTec AD evaluation)",
             "n_maps": len(outcome.indices)}
    return block, time.perf_counter() - start


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """<run dir>/config.yaml: the resolved config, with paths written against their named roots."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(portable_config(cfg)), run_dir / "config.yaml")


def announce_result(path: Path, cfg: DictConfig) -> None:
    """Tell the command that started this job where its result went (one O_APPEND line per job, read by the
    CLI to print and publish the rows of the jobs it ran, whichever launcher ran them)."""
    log = os.environ.get(JOB_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{path.resolve()}\t{Path(cfg.paths.results_dir).resolve()}\n")


# ---------------------------------------------------------------------------------------- execute
def execute(cfg: DictConfig, run_dir: Path, task: str, *, checkpoint: Path | None = None,
            record: dict[str, Any] | None = None, reraise: bool = True,
            load: Callable[[AnomalyModule, Path], int | None] = load_weights) -> dict[str, Any]:
    """Build, then fit (`checkpoint` None) or load `checkpoint` with `load` (default: a trained run's checkpoint;
    tasks/evaluate.py passes a paper's released-weights loader), test, and always write result.json.

    `record`: entries to add to the record up front (e.g. eval's source checkpoint and budget). A failure
    becomes a failed result.json and is re-raised when `reraise` (a single run: non-zero exit) or only
    printed (a job of a sweep, so the other jobs still run).
    """
    reset_peak_memory()  # this job's peaks, not those of the jobs before it in this process
    save_config(cfg, run_dir)
    record = {**start_record(cfg, task), **(record or {})}
    write_result(run_dir, record)  # status "running" until the run ends: a killed run still leaves its record
    timings: dict[str, float] = {}
    failure: Exception | None = None
    try:
        run = build(cfg)
        if checkpoint is None:
            trainer, timings["train_s"] = fit(run, run_dir)
            record["budget"] = budget_of(cfg, trainer)
            if cfg.get("save_checkpoint", True):
                # relative to the run folder (beside result.json): valid wherever the folder is moved or copied
                record["checkpoint"] = save_checkpoint(trainer, run_dir).relative_to(run_dir).as_posix()
            ddp.leave_process_group()  # with the other ranks, after the last collective: testing is one process
            tester = testing_trainer(cfg, run_dir, fitted=trainer)
        else:
            step = load(run.module, checkpoint)
            if step is not None:  # a step<N>.ckpt holds fewer steps than the run that wrote it
                record["budget"] = {**record["budget"], "global_step": step}
            tester = testing_trainer(cfg, run_dir)
        outcome = evaluate_on_test_set(run.module, run.datamodule, EvaluationSettings.from_config(cfg), tester)
        record_outcome(record, run, outcome, run_dir)
        timings.update(outcome.timings)
        if (cfg.get("export") or {}).get("maps"):
            record["export"], timings["export_s"] = export_outcome_maps(cfg, run, outcome, run_dir)
    except Exception as error:
        failure = error
        record.update(status="failed", error=failure_info(error))
    finally:
        record["timings"] = {k: round(v, 3) for k, v in timings.items()}
        record.update(peak_memory())
        record["finished_at"] = now_iso()
        announce_result(write_result(run_dir, record), cfg)
    if failure is not None:
        if reraise:
            raise failure
        print(f"job failed ({type(failure).__name__}: {failure}); recorded in {run_dir}")
    return record
