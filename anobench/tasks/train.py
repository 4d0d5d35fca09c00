"""`anobench train`: seed, fit, save, test, write result.json, rebuild the leaderboard.

Any exception is caught and recorded as a failed result.json before it is re-raised (single run) or
swallowed (multirun, so the other jobs of the sweep still run; Hydra's end-of-sweep hook would never
run after a raising job, so every job rebuilds the leaderboard from the result files itself).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
from omegaconf import DictConfig, OmegaConf

from anobench.allocator import keep_freed_memory
from anobench.errors import ConfigError
from anobench.quiet import quiet_third_party
from anobench.results.identity import config_hash
from anobench.results.publish import write_leaderboard
from anobench.results.record import (
    device_info, failure_info, git_sha, library_versions, now_iso, peak_memory, write_result,
)
from anobench.visualize.task import record_figures

SWEEP_LOG_ENV = "ANOBENCH_JOB_LOG"  # set by the CLI: every job appends its result path there
# Where a launcher says which process of a multi-process (DDP) run this is: Lightning's own launcher
# (LOCAL_RANK, NODE_RANK), torchrun (RANK) and SLURM (SLURM_PROCID).
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def uses_ddp(trainer_cfg: DictConfig) -> bool:
    """The trainer config selects one of Lightning's DDP strategies (conf/trainer/ddp.yaml)."""
    return "ddp" in str(trainer_cfg.get("strategy") or "")


def is_primary_process() -> bool:
    """False in the extra processes of a DDP run: they train with rank 0, and only rank 0 tests and records."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_ENV)


def run_dir_from_hydra() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class StepCheckpoints(L.Callback):
    """Save ``<run dir>/checkpoints/step<N>.ckpt`` when training reaches each of `steps` (config `checkpoint_steps`).

    One run then yields the models of several smaller budgets (scripts/learning_curves.py evaluates them):
    the weights at step N are those of a run with ``max_steps=N`` and the same seed, as long as nothing in
    the method depends on ``max_steps`` itself (OGNet's phase split and NBS's end-of-fit predictor refit do).
    """

    def __init__(self, run_dir: Path, steps: list[int]) -> None:
        self.directory = run_dir / "checkpoints"
        self.steps = sorted({int(s) for s in steps})
        if any(s < 1 for s in self.steps):
            raise ConfigError(f"checkpoint_steps: expected positive step counts, got {list(steps)}")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step in self.steps and not (self.directory / f"step{step}.ckpt").exists():
            trainer.save_checkpoint(self.directory / f"step{step}.ckpt", weights_only=False)


def fit_callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    """The callbacks of a training fit, the same on every process of a DDP run (a checkpoint save is collective)."""
    steps = list(cfg.get("checkpoint_steps") or [])
    return [StepCheckpoints(run_dir, steps)] if steps else []


def build_trainer(trainer_cfg: DictConfig, run_dir: Path, **overrides: Any) -> L.Trainer:
    """Instantiate lightning.Trainer from conf/trainer/<name>.yaml (its `name` key is ours, not Lightning's)."""
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    quiet_third_party()
    kwargs = OmegaConf.to_container(trainer_cfg, resolve=True)
    kwargs.pop("name", None)
    kwargs.setdefault("logger", CSVLogger(save_dir=str(run_dir), name="logs", version=""))
    kwargs["default_root_dir"] = str(run_dir)
    kwargs.update(overrides)
    return instantiate(kwargs)


def build_run(cfg: DictConfig) -> tuple[Any, Any]:
    """Seed, then build the datamodule and the method (with its evaluation settings) from a run config."""
    from hydra.utils import instantiate

    quiet_third_party()
    apply_torch_threads(cfg)
    if cfg.get("malloc_keep_freed", True):
        keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.method.module, _convert_="all")
    module.evaluation_resolution = cfg.evaluation.resolution
    module.pro_fpr_limit = float(cfg.evaluation.pro_fpr_limit)
    return datamodule, module


def apply_torch_threads(cfg: DictConfig) -> None:
    """Set `torch_threads` (when given) before anything is computed or recorded: float reductions, hence
    the numbers, depend on it, and result.json's device.torch_threads must say what the run used."""
    if cfg.get("torch_threads"):
        import torch

        torch.set_num_threads(int(cfg.torch_threads))


def base_record(cfg: DictConfig, task: str) -> dict[str, Any]:
    """Everything that produced a run, known before it starts."""
    apply_torch_threads(cfg)  # the first job of an in-process sweep would otherwise record the previous count
    return {
        "task": task,
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "category": cfg.data.category,
        "seed": cfg.seed,
        # the pretrained network the method builds on (methods that use none: "none"); methods may
        # default to a backbone other than the paper's (see each README), so it is recorded up front
        "backbone": {"name": cfg.backbone.get("name"), "arch": cfg.backbone.get("arch"),
                     "pretrained": bool(cfg.backbone.get("pretrained"))} if cfg.get("backbone") else None,
        "status": "running",
        "started_at": now_iso(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_hash": config_hash(OmegaConf.to_container(cfg, resolve=True)),  # anobench bench resumes by it
        "git_sha": git_sha(),
        "versions": library_versions(),
        "device": device_info(cfg.trainer.get("accelerator")),
        "command": os.environ.get("ANOBENCH_COMMAND"),
    }


def budget_of(cfg: DictConfig, trainer: L.Trainer | None) -> dict[str, Any]:
    label = "smoke" if cfg.trainer.get("name") == "smoke" else cfg.get("budget_label", "reduced")
    return {
        "label": label,
        "experiment": cfg.get("experiment_name"),
        "trainer": cfg.trainer.get("name"),
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
        "global_step": None if trainer is None else trainer.global_step,
        "epochs_done": None if trainer is None else trainer.current_epoch,
        "train_repeats": cfg.method.input.get("train_repeats"),
        "batch_size": cfg.method.input.get("batch_size"),  # per process
        "world_size": None if trainer is None else trainer.world_size,  # processes that trained (DDP)
    }


def finish(record: dict[str, Any], run_dir: Path, cfg: DictConfig) -> Path:
    """Write result.json, tell the CLI about it, and rebuild the leaderboard of the results folder."""
    record.update(peak_memory())
    record["finished_at"] = now_iso()
    path = write_result(run_dir, record)
    log = os.environ.get(SWEEP_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:  # O_APPEND: one short line per job
            handle.write(f"{path.resolve()}\t{Path(cfg.paths.results_dir).resolve()}\n")
    try:
        write_leaderboard(cfg.paths.results_dir)
    except Exception as error:  # the result is safe on disk; a table problem must not fail the run
        print(f"warning: could not rebuild the leaderboard: {error}")
    return path


def record_test_results(record: dict[str, Any], module: Any, datamodule: Any) -> None:
    """Mark `record` ok with the evaluator's metrics and what they were computed on."""
    results = module.test_results
    record.update(
        status="ok",
        metrics={k: float(v) for k, v in results["metrics"].items()},
        evaluation={k: v for k, v in results.items() if k != "metrics"},
        n_train_images=len(datamodule.index.train),
        n_test_images=len(datamodule.test_samples),
    )


def run_recorded(record: dict[str, Any], run_dir: Path, cfg: DictConfig,
                 body: Callable[[dict[str, float]], None]) -> dict[str, Any]:
    """Run `body(timings)`, then always write result.json: ok as `body` left it, or failed with the error.

    A failure is re-raised in a single run (non-zero exit) and swallowed in a multirun, so that
    the other jobs of the sweep still run; the CLI reports failed jobs at the end.
    """
    timings: dict[str, float] = {}
    failure: Exception | None = None
    try:
        body(timings)
    except Exception as error:
        failure = error
        record.update(status="failed", error=failure_info(error))
    finally:
        record["timings"] = {k: round(v, 3) for k, v in timings.items()}
        finish(record, run_dir, cfg)
    if failure is not None:
        if not is_multirun():
            raise failure
        print(f"job failed ({type(failure).__name__}: {failure}); recorded in {run_dir}")
    return record


def run_test_and_record(trainer: L.Trainer, module: Any, datamodule: Any, record: dict[str, Any],
                        cfg: DictConfig, run_dir: Path, timings: dict[str, float]) -> None:
    """Run the shared test loop (timed), then put its metrics and the run's figures into `record`."""
    start = time.perf_counter()
    trainer.test(module, datamodule=datamodule, verbose=False)
    timings["inference_s"] = time.perf_counter() - start
    record_test_results(record, module, datamodule)
    record_figures(record, cfg, run_dir, module, datamodule, timings)


def single_process_trainer(trainer: L.Trainer, cfg: DictConfig, run_dir: Path) -> L.Trainer:
    """The trainer to test with: `trainer` itself, or after a DDP fit a one-device trainer on rank 0.

    Testing is never distributed: the evaluator needs every test image's map in one process, and test-time
    state (MNAD's memory updates, normalisation statistics) must see the images in order, as without DDP.
    """
    if trainer.world_size == 1:
        return trainer
    return build_trainer(cfg.trainer, run_dir, strategy="auto", devices=1, num_nodes=1, sync_batchnorm=False,
                         logger=False)


def fit_as_worker(cfg: DictConfig) -> dict[str, Any]:
    """A non-zero rank of a DDP run: take part in the fit (and the collective checkpoint save), write nothing."""
    datamodule, module = build_run(cfg)
    trainer = build_trainer(cfg.trainer, run_dir_from_hydra(), callbacks=fit_callbacks(cfg, run_dir_from_hydra()))
    trainer.fit(module, datamodule=datamodule)
    if cfg.get("save_checkpoint", True):
        trainer.save_checkpoint(run_dir_from_hydra() / "checkpoints" / "last.ckpt", weights_only=False)  # rank 0 writes it
    return {"status": "worker", "rank": trainer.global_rank}


@contextlib.contextmanager
def own_process_group() -> Iterator[None]:
    """Leave no DDP state behind for the next job of this process (a sweep or suite runs many).

    Lightning keeps the process group and the LOCAL_RANK/WORLD_SIZE/MASTER_* variables it set; the next
    DDP job would then take itself for an externally started rank and wait for peers that never come.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit `cfg.method` on `cfg.data`, test it, and record the result. Returns the result record."""
    if not is_primary_process():
        return fit_as_worker(cfg)
    with own_process_group():
        return train_and_record(cfg)


def train_and_record(cfg: DictConfig) -> dict[str, Any]:
    run_dir = run_dir_from_hydra()
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    record = base_record(cfg, "train")
    record["budget"] = budget_of(cfg, None)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"

    def body(timings: dict[str, float]) -> None:
        datamodule, module = build_run(cfg)
        trainer = build_trainer(cfg.trainer, run_dir, callbacks=fit_callbacks(cfg, run_dir))
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        timings["train_s"] = time.perf_counter() - start
        record["budget"] = budget_of(cfg, trainer)
        if cfg.get("save_checkpoint", True):
            trainer.save_checkpoint(checkpoint, weights_only=False)  # the full state; said, so Lightning says nothing
            record["checkpoint"] = str(checkpoint)
        run_test_and_record(single_process_trainer(trainer, cfg, run_dir), module, datamodule, record, cfg, run_dir,
                            timings)

    return run_recorded(record, run_dir, cfg, body)
