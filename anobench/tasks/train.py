"""`anobench train`: fit a method on a category, test it, record result.json (anobench.tasks.run does the work).

A failure is recorded as a failed result.json, then re-raised in a single run (non-zero exit) or swallowed
in a multirun, so the other jobs of the sweep still run (Hydra's end-of-sweep hook would never run after a
raising job); the CLI publishes the leaderboard once, after the command's jobs, from the result files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from anobench.tasks import ddp, run


def hydra_run_dir() -> Path:
    """This job's folder (Hydra's run or sweep output dir)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit `cfg.method` on `cfg.data`, test it and record the result; returns the result record."""
    if not ddp.is_primary_process():
        return run.fit_as_worker(cfg, hydra_run_dir())
    with ddp.own_process_group():
        return run.execute(cfg, hydra_run_dir(), "train", reraise=not is_multirun())
