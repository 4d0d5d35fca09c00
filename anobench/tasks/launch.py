"""Run a suite's pending jobs through a Hydra launcher plugin, so suites scale on engines people already run.

`anobench bench` plans the grid itself (what is done, what must be redone, each job's run folder) and then
hands the pending jobs to Hydra's launcher, exactly as `-m` would:

    (no launcher given)                  hydra's basic launcher: one job after another, in this process
    n_jobs=N                             shorthand for hydra/launcher=joblib hydra.launcher.n_jobs=N
                                         (several GPUs: each worker its own, anobench.tasks.devices)
    hydra/launcher=joblib                local processes (hydra-joblib-launcher)
    hydra/launcher=submitit_local        submitit's local executor (one subprocess per job)
    hydra/launcher=submitit_slurm        a SLURM job array per resource class (hydra-submitit-launcher,
                                         `pip install 'anobench[slurm]'`), hydra.launcher.partition=...

Each job is one sweep instance: its overrides are the job's train overrides plus `hydra.sweep.dir` /
`hydra.sweep.subdir` naming the run folder the planner chose, and its task is `suite_job_task`, the
ordinary train task wrapped so that a failure becomes a failed result.json instead of an exception.

Submitit launchers get each method's `method.resources` (timeout, GPUs, CPUs, memory; see
conf/method/*.yaml) unless the command line sets that `hydra.launcher.<key>` itself: jobs are grouped by
resources and each group is submitted as its own array, all groups at once.
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from anobench.config import config_dir, dataset_label
from anobench.errors import AnobenchError, ConfigError
from anobench.io import folder_lock
from anobench.results.record import failure_info, now_iso, settle_result
from anobench.tasks import ddp, devices
from anobench.tasks.ddp import quote
from anobench.tasks.plan import WORKERS_LOCK, PlannedJob
from anobench.tasks.train import train, train_in_own_process

# Submitit parameters a method's `resources` block may set (names as in hydra-submitit-launcher).
RESOURCE_KEYS = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb")


def is_launcher_override(arg: str) -> bool:
    """`hydra/launcher=...`, `hydra.launcher.<key>=...` and other `hydra.` keys steer the launch, not a job."""
    key = arg.partition("=")[0].lstrip("+~")
    return key == "hydra/launcher" or key.startswith("hydra.") or key.startswith("hydra/")


def launcher_overrides(args: Sequence[str], n_jobs: int) -> list[str]:
    """The Hydra overrides for the launch: the user's, or joblib with n_jobs workers for `n_jobs=N`."""
    overrides = list(args)
    chose_launcher = any(a.partition("=")[0].lstrip("+") == "hydra/launcher" for a in overrides)
    if n_jobs > 1:
        if chose_launcher:
            raise AnobenchError("anobench bench: give either n_jobs=N (local joblib processes) or hydra/launcher=..., "
                                "not both; set the launcher's own parallelism with hydra.launcher.<key>=...")
        overrides = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}", *overrides]
    return overrides


def failed_record(cfg: DictConfig | None, error: BaseException, fallback: dict[str, Any]) -> dict[str, Any]:
    record = dict(fallback)
    if cfg is not None:
        record.update(method=str(cfg.method.name), dataset=dataset_label(cfg.data), category=str(cfg.data.category),
                      seed=int(cfg.seed))
    record.update(task="train", status="failed", error=failure_info(error), finished_at=now_iso())
    return record


def suite_job_task(cfg: DictConfig) -> dict[str, Any]:
    """What every launched suite job runs: the train task; never raises (a failure is a failed result)."""
    from hydra.core.hydra_config import HydraConfig

    # A DDP job whose ranks Lightning starts runs as its own process (anobench.tasks.train.train_in_own_process):
    # its ranks re-run exactly its command, and a failing rank takes that process down, never the suite.
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    suite_dir = Path(str(cfg.paths.results_dir))
    return _run_suite_job(cfg, run_dir, suite_dir)


def _run_suite_job(cfg: DictConfig, run_dir: Path, suite_dir: Path) -> dict[str, Any]:
    # Held while the job runs: a re-run of the suite refuses to start (rather than move this folder aside
    # under it) while workers of a killed `anobench bench` are still finishing their job.
    with folder_lock(suite_dir, WORKERS_LOCK, exclusive=False, busy_message="suite workers lock busy"):
        try:
            record = train_in_own_process(cfg) if ddp.ranks_started_by_lightning(cfg.trainer) else train(cfg)
        except Exception as error:  # noqa: BLE001 - recorded, and the suite goes on
            # the train task's own failed record if it wrote one, else this failure (over its `running` record)
            record = settle_result(run_dir, failure_info(error), failed_record(cfg, error, {}))
    if record.get("status") != "worker":  # progress as jobs finish (the suite's summary comes at the end)
        print(f"finished: {cfg.method.name} {dataset_label(cfg.data)}/{cfg.data.category} seed {cfg.seed}: "
              f"{record.get('status')} ({run_dir})", flush=True)
    return record


def job_overrides(item: PlannedJob, suite_dir: Path) -> list[str]:
    """One sweep instance: the job's train overrides, run in exactly the folder the planner chose."""
    # hydra.run.dir too: Lightning's DDP launcher starts the other ranks of a `trainer=ddp` job as
    # `anobench train <job overrides> hydra.run.dir=<it>`.
    return [*item.job.train_overrides(suite_dir), f"hydra.sweep.dir={quote(item.run_dir.parent)}",
            f"hydra.sweep.subdir={quote(item.run_dir.name)}", f"hydra.run.dir={quote(item.run_dir)}"]


def _resource_overrides(item: PlannedJob, user_keys: set[str]) -> tuple[str, ...]:
    """`hydra.launcher.<key>=<value>` for the job's method.resources, except keys the user set."""
    return tuple(f"hydra.launcher.{key}={item.resources[key]}" for key in RESOURCE_KEYS
                 if item.resources.get(key) is not None and key not in user_keys)


def resource_groups(todo: Sequence[PlannedJob], overrides: Sequence[str] = ()) -> dict[tuple[str, ...], list[int]]:
    """Jobs (indices into todo) by the scheduler request their methods' resources make; keys the command
    line sets (hydra.launcher.timeout_min=...) win over every method's value."""
    user_keys = {o.partition("=")[0].split(".")[-1] for o in overrides if o.lstrip("+").startswith("hydra.launcher.")}
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, item in enumerate(todo):
        groups.setdefault(_resource_overrides(item, user_keys), []).append(index)
    return groups


def worker_task(target: str, n_jobs: Any) -> Callable[[DictConfig], dict[str, Any]]:
    """What each job runs: suite_job_task, bound to its worker's own GPU where joblib runs several workers on
    a node with several GPUs (anobench.tasks.devices; otherwise every worker would train on cuda:0)."""
    if target.endswith("JoblibLauncher"):
        slots = devices.worker_gpu_slots(devices.joblib_workers(n_jobs))
        if slots:
            return functools.partial(gpu_worker_task, slots=slots)
    return suite_job_task


def gpu_worker_task(cfg: DictConfig, slots: tuple[str, ...]) -> dict[str, Any]:
    """suite_job_task in a local worker that trains on its own GPU (devices.claim_worker_gpu)."""
    if str(cfg.trainer.get("accelerator") or "auto") != "cpu":
        devices.claim_worker_gpu(slots)
    return suite_job_task(cfg)


def check_slurm_tasks(config: DictConfig, items: Sequence[PlannedJob]) -> None:
    """Under SLURM srun starts one task per device and node (ddp.check_slurm_tasks): check a DDP job's devices
    against the tasks per node before submitting or starting anything, not as a failure of every job."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
    if target.endswith("SlurmLauncher"):
        tasks = int(OmegaConf.select(config, "hydra.launcher.tasks_per_node") or 1)
        gpus = OmegaConf.select(config, "hydra.launcher.gpus_per_node")
        where = f"hydra.launcher.tasks_per_node={tasks}"
    elif ddp.slurm_starts_ranks():  # this command is itself a task of a SLURM job (sbatch/srun, not interactive)
        import torch

        tasks, gpus = ddp.slurm_tasks_per_node(), torch.cuda.device_count() or None
        where = f"this SLURM job's --ntasks-per-node={tasks}"
    else:
        return
    for item in (i for i in items if i.distributed and tasks is not None):
        devices = int(item.devices) if item.devices.isdigit() else \
            (int(gpus) if gpus and item.devices in ("auto", "-1") else None)
        if devices is not None and devices != tasks:
            raise ConfigError(
                f"anobench bench: {item.job.label} uses trainer=ddp with trainer.devices={item.devices} ({devices} "
                f"device(s) per node), but {where}: under SLURM each rank is a task srun starts, one per device. "
                f"Set hydra.launcher.tasks_per_node={devices} (and hydra.launcher.gpus_per_node={devices}), or "
                f"trainer.devices={tasks}")


def launch(todo: Sequence[PlannedJob], suite_dir: Path, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run `todo` through the configured Hydra launcher; one result record per job, in order."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobRuntime
    from hydra.errors import HydraException
    from hydra.types import HydraContext

    if not todo:
        return []
    # Each job's log file stays (<run dir>/anobench_bench.log); its console copy goes: Lightning's own
    # "lightning" logger already prints to the console, so every line would appear twice.
    base = ["hydra.job_logging.root.handlers=[file]", *overrides, f"hydra.sweep.dir={quote(suite_dir)}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="anobench_bench"):
        JobRuntime.instance().set("name", "anobench_bench")
        try:
            master = compose(config_name="train", overrides=base, return_hydra_config=True)
        except HydraException as error:
            raise AnobenchError(f"anobench bench: the launcher overrides {list(overrides)} do not compose: {error}") \
                from None
        target = str(OmegaConf.select(master, "hydra.launcher._target_") or "")
        groups = resource_groups(todo, overrides) if "submitit" in target else {(): list(range(len(todo)))}
        distributed = [item.job.label for item in todo if item.distributed]
        if distributed and not (target.endswith("BasicLauncher") or target.endswith("SlurmLauncher")):
            raise AnobenchError(
                f"anobench bench: {distributed[0]} uses trainer=ddp, whose extra processes Lightning starts by "
                f"re-running the command; that works with the default launcher (one job at a time) or with "
                f"hydra/launcher=submitit_slurm (hydra.launcher.tasks_per_node=<devices>), not with {target}")
        task = worker_task(target, OmegaConf.select(master, "hydra.launcher.n_jobs"))
        config_loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
        launchers = {}
        for resources in groups:  # composed here, in this thread: Hydra's global state is not thread-safe
            config = compose(config_name="train", overrides=[*base, *resources], return_hydra_config=True) \
                if resources else master
            check_slurm_tasks(config, [todo[i] for i in groups[resources]])
            launchers[resources] = Plugins.instance().instantiate_launcher(
                hydra_context=HydraContext(config_loader=config_loader, callbacks=Callbacks(config)),
                task_function=task, config=config)

        def run_group(resources: tuple[str, ...]) -> list[Any]:
            indices = groups[resources]
            return list(launchers[resources].launch([job_overrides(todo[i], suite_dir) for i in indices],
                                                    initial_job_idx=indices[0]))

        outcomes: dict[int, Any] = {}
        # Every resource class at once (each launch blocks until its jobs are done); one group runs here.
        with ThreadPoolExecutor(max_workers=len(groups)) if len(groups) > 1 else contextlib.nullcontext() as pool:
            futures = {r: (pool.submit(run_group, r) if pool else None) for r in groups}
            for resources, future in futures.items():
                try:
                    outcomes.update(zip(groups[resources], future.result() if future else run_group(resources)))
                except Exception as error:  # noqa: BLE001 - e.g. a SLURM job killed at its time limit
                    outcomes.update((i, error) for i in groups[resources])
    return [_record_of(todo[i], suite_dir, outcomes.get(i)) for i in range(len(todo))]


def _record_of(item: PlannedJob, suite_dir: Path, outcome: Any) -> dict[str, Any]:
    """The job's result.json; if the job left none or an unfinished (`running`) one (killed, never started),
    a failed one saying why."""
    from hydra.core.utils import JobStatus

    if isinstance(outcome, BaseException):
        error: BaseException = outcome
    elif outcome is not None and getattr(outcome, "status", None) == JobStatus.FAILED:
        error = outcome._return_value  # noqa: SLF001 - the exception the task raised
    else:
        error = RuntimeError("the launcher returned without the job finishing its result.json")
    fallback = failed_record(None, error, {"method": item.job.method, "dataset": item.dataset,
                                           "category": item.category, "seed": item.job.seed,
                                           "suite_job": item.job.train_overrides(suite_dir)})
    return settle_result(item.run_dir, failure_info(error), fallback)  # the job's own record when it finished it
