"""Everything about multi-process (DDP) runs, in one place: which process this is, the command line the
extra ranks re-run, and the process-group state a run must leave behind clean.

How a `trainer=ddp` run works: Lightning starts the extra ranks of a job by re-running ``sys.argv`` with
LOCAL_RANK set (on SLURM, srun starts them and sets SLURM_PROCID). Every rank builds and fits the same run;
only rank 0 tests and records (testing is never distributed: the evaluator needs every test map in one
process, and test-time state must see the images in order). The re-run command must therefore be exactly
the job's own ``anobench <verb> <overrides>``: `rank_command` says what a started rank runs, `job_argv`
sets argv for a command's job, and `run_job_process` runs each DDP job of a sweep or suite as its own process
(its own argv, and a failing rank, which makes Lightning kill rank 0, takes down that job only).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from anobench.config import VERB_ENV
from anobench.errors import ConfigError

# Where a launcher says which process of a multi-process run this is: Lightning's own launcher
# (LOCAL_RANK, NODE_RANK), torchrun (RANK) and SLURM (SLURM_PROCID).
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
# The trainer a DDP run tests with on rank 0 (Trainer overrides): one process, one device.
SINGLE_PROCESS = {"strategy": "auto", "devices": 1, "num_nodes": 1, "sync_batchnorm": False}


def quote(value: Any) -> str:
    """A value as a Hydra override literal (paths may hold characters the override grammar reserves)."""
    text = str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def uses_ddp(trainer_cfg: DictConfig) -> bool:
    """The trainer config selects one of Lightning's DDP strategies (conf/trainer/ddp.yaml)."""
    return "ddp" in str(trainer_cfg.get("strategy") or "")


def ranks_started_by_lightning(trainer_cfg: DictConfig) -> bool:
    """A DDP trainer whose extra processes Lightning starts by re-running argv (not srun or torchrun: they start them)."""
    return uses_ddp(trainer_cfg) and not launched_externally()


def slurm_starts_ranks() -> bool:
    """srun started this process as one task of its job, by Lightning's own rule (SLURMEnvironment.detect):
    an interactive allocation (`salloc`, `srun --pty bash`: job name bash/interactive) does not count, so there
    Lightning starts the ranks itself, and our decision must be the one Lightning takes."""
    import warnings

    from lightning.fabric.plugins.environments import SLURMEnvironment

    with warnings.catch_warnings():  # "srun is available but not used": Lightning says it again where it matters
        warnings.simplefilter("ignore")
        return SLURMEnvironment.detect()


def launched_externally() -> bool:
    """The ranks of this run are started by srun or torchrun (Lightning's SLURM or TorchElastic environment)."""
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    return TorchElasticEnvironment.detect() or slurm_starts_ranks()


def trainer_devices(trainer_cfg: DictConfig) -> int | None:
    """Devices per node the trainer config asks for (`auto`/-1: every device of the accelerator); None if unknown."""
    devices = trainer_cfg.get("devices", "auto")
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:  # Lightning's "0,1": device indices
        return len([part for part in text.split(",") if part.strip()])
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text not in ("auto", "-1"):
        return None
    accelerator = str(trainer_cfg.get("accelerator") or "auto")
    if accelerator == "cpu":
        return 1
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count()
    return 1 if accelerator == "auto" else None


def slurm_tasks_per_node() -> int | None:
    """Tasks srun starts on each node (--ntasks-per-node, else SLURM_TASKS_PER_NODE's first entry, e.g. "2(x3)")."""
    explicit = os.environ.get("SLURM_NTASKS_PER_NODE")
    if explicit:
        return int(explicit)
    listed = os.environ.get("SLURM_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    return int(listed) if listed.isdigit() else None


def check_slurm_tasks(trainer_cfg: DictConfig) -> None:
    """Where srun starts the ranks, Lightning wants one task per device and node and raises its own ValueError
    in every job otherwise (e.g. `trainer=ddp`'s `devices: auto` on a 4-GPU node of a one-task sbatch).
    Say so up front, naming both settings."""
    if not slurm_starts_ranks():
        return
    problems = []
    tasks, devices = slurm_tasks_per_node(), trainer_devices(trainer_cfg)
    if tasks is not None and devices is not None and tasks != devices:
        problems.append(f"trainer.devices={trainer_cfg.get('devices')} is {devices} device(s) per node, but SLURM "
                        f"starts {tasks} task(s) per node (--ntasks-per-node={tasks})")
    nodes, num_nodes = os.environ.get("SLURM_NNODES"), int(trainer_cfg.get("num_nodes") or 1)
    if nodes and nodes.isdigit() and int(nodes) != num_nodes:
        problems.append(f"trainer.num_nodes={num_nodes}, but the SLURM job has {nodes} node(s) (--nodes={nodes})")
    if problems:
        raise ConfigError(
            "under SLURM every rank is a task srun starts, one per device: " + "; ".join(problems) + ". Set "
            "hydra.launcher.tasks_per_node (sbatch --ntasks-per-node) and hydra.launcher.gpus_per_node to the "
            "devices per node, or trainer.devices to the tasks per node (in an interactive allocation, "
            "srun --job-name=interactive lets Lightning start the ranks itself)")


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


def leave_process_group() -> None:
    """Every rank calls this after its last collective (the fit, or the checkpoint save after it): a barrier, then
    the group goes, on all ranks together. Rank 0 then tests alone and the others exit; otherwise the others
    would exit while rank 0 tests, and rank 0 would tear down (NCCL: hang in) a group whose peers are gone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# What a job run by `run_job_process` printed (every rank's output), beside its result.json.
JOB_OUTPUT_FILE = "job_output.log"


def run_job_process(verb: str, overrides: Sequence[str], run_dir: Path) -> tuple[int, str]:
    """Run ``anobench <verb> <overrides>`` as its own process, in its own session (process group); returns its
    exit code and the tail of its output, which also goes to the console and to <run dir>/job_output.log.

    How a sweep or suite runs a DDP job whose ranks Lightning starts: Lightning re-runs argv to start them (here
    exactly this job's command), and when any rank fails it SIGKILLs rank 0: that is then this job's process,
    never the sweep. Whatever the job leaves behind when it ends (a rank stuck in a collective) goes with its group.
    The outer command reports the job's result (JOB_LOG_ENV set: anobench.cli), the job only records it.
    """
    import collections
    import signal
    import subprocess
    import threading

    from anobench.config import JOB_LOG_ENV

    run_dir.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    env = {**os.environ, JOB_LOG_ENV: os.devnull}
    with open(run_dir / JOB_OUTPUT_FILE, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-m", "anobench", verb, *overrides], env=env, text=True,
                                   errors="replace", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)

        def relay() -> None:
            for line in process.stdout:  # type: ignore[union-attr]
                sys.stdout.write(line)
                log.write(line)
                tail.append(line)

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        try:
            code = process.wait()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            reader.join()
    return code, "".join(tail)
