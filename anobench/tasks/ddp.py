"""Everything about multi-process (DDP) runs, in one place: which process this is, the command line the
extra ranks re-run, and the process-group state a run must leave behind clean.

How a `trainer=ddp` run works: Lightning starts the extra ranks of a job by re-running ``sys.argv`` with
LOCAL_RANK set (on SLURM, srun starts them and sets SLURM_PROCID). Every rank builds and fits the same run;
only rank 0 tests and records (testing is never distributed: the evaluator needs every test map in one
process, and test-time state must see the images in order). The re-run command must therefore be exactly
the job's own ``anobench <verb> <overrides>``: `rank_command` says what a started rank runs, `job_argv`
sets argv for a job of a sweep or suite.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Sequence

from omegaconf import DictConfig

from anobench.config import VERB_ENV

# Where a launcher says which process of a multi-process run this is: Lightning's own launcher
# (LOCAL_RANK, NODE_RANK), torchrun (RANK) and SLURM (SLURM_PROCID).
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
# The trainer a DDP run tests with on rank 0 (Trainer overrides): one process, one device.
SINGLE_PROCESS = {"strategy": "auto", "devices": 1, "num_nodes": 1, "sync_batchnorm": False}


def uses_ddp(trainer_cfg: DictConfig) -> bool:
    """The trainer config selects one of Lightning's DDP strategies (conf/trainer/ddp.yaml)."""
    return "ddp" in str(trainer_cfg.get("strategy") or "")


def ranks_started_by_lightning(trainer_cfg: DictConfig) -> bool:
    """A DDP trainer whose extra processes Lightning starts by re-running argv (not SLURM: srun starts them)."""
    return uses_ddp(trainer_cfg) and "SLURM_NTASKS" not in os.environ


def is_primary_process() -> bool:
    """False in the extra processes of a DDP run: they train with rank 0, and only rank 0 tests and records."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_ENV)


def rank_command(args: Sequence[str]) -> tuple[str, list[str]] | None:
    """(verb, overrides) when this process is a rank Lightning started by re-running a Hydra verb's argv
    (argv then holds overrides only, and the verb travels in VERB_ENV); None for an ordinary command line."""
    verb = os.environ.get(VERB_ENV)
    if args and "=" in args[0] and verb:
        return verb, list(args)
    return None


@contextlib.contextmanager
def job_argv(verb: str, overrides: Sequence[str]) -> Iterator[None]:
    """While a job runs, argv is ``<script> <overrides>`` and VERB_ENV names the verb, so that the ranks
    Lightning starts re-run exactly this job."""
    saved_argv, saved_verb = sys.argv, os.environ.get(VERB_ENV)
    sys.argv = [saved_argv[0] if saved_argv else "anobench", *overrides]
    os.environ[VERB_ENV] = verb
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_verb is None:
            os.environ.pop(VERB_ENV, None)
        else:
            os.environ[VERB_ENV] = saved_verb


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


def single_process_overrides(world_size: int) -> dict[str, Any] | None:
    """Trainer overrides for testing after a fit on `world_size` processes; None when the fit trainer will do."""
    return None if world_size == 1 else dict(SINGLE_PROCESS)
