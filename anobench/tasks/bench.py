"""`anobench bench suite=<name>`: run a named grid (methods × categories × seeds) and keep one leaderboard.

A suite is `conf/suite/<name>.yaml` (loaded with OmegaConf, not composed into conf/train.yaml):

    name: synthetic_quick            # the results go to <results_dir>/suites/<name>/
    methods: [memae, patch_svdd]     # method= options
    categories: [synthetic/washer]   # data= options
    seeds: [0]
    experiment: "{method}_paper"     # null | a template with {method} | {method: experiment or null}
    overrides: [trainer=smoke]       # extra train overrides for every job

Each job is composed from conf/train.yaml with Hydra's compose API and run in-process by the ordinary
train task, in its own deterministic folder `runs/<method>/<dataset>/<category>/seed<seed>/<config hash>/`
(`anobench.results.identity.config_hash`: the resolved config minus paths). Resuming is therefore a
lookup: a job whose folder holds a result.json with status ok and the same hash is skipped; a folder
without one (a killed run) or with a failed result is moved aside to `stale/` and the job is redone;
ok results of the same grid cell under another hash (the config changed) are moved aside too, so the
suite's leaderboard only shows the current config. Results are written atomically and the leaderboard
under a folder lock, so parallel jobs cannot lose or corrupt rows. The pending jobs run through a Hydra
launcher (`anobench.tasks.launch`): in this process by default, `n_jobs=N` or `hydra/launcher=joblib` for
local processes, `hydra/launcher=submitit_slurm` for a SLURM cluster.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from anobench.config import SUITE_GROUP, SUITES_FOLDER, config_dir, default_results_dir, group_options, suite_options
from anobench.errors import AnobenchError

STALE_FOLDER = "stale"
# Command-line keys that steer the bench verb itself (everything else is a suite key or a job override).
CONTROL_KEYS = ("suite", "results_dir", "n_jobs", "dry_run")
# Train keys the grid sets per job: giving them as plain overrides would silently collapse the grid.
GRID_KEYS = {"method": "methods", "data": "categories", "seed": "seeds", "experiment": "experiment"}
SUITE_KEYS = ("name", "description", "methods", "categories", "seeds", "experiment", "overrides")


@dataclass(frozen=True)
class Job:
    """One cell of a suite's grid, as train overrides."""

    method: str
    data: str
    seed: int
    experiment: str | None
    overrides: tuple[str, ...] = ()

    def train_overrides(self, suite_dir: Path) -> list[str]:
        grid = [f"method={self.method}", f"data={self.data}", f"seed={self.seed}"]
        if self.experiment:
            grid.append(f"experiment={self.experiment}")
        return [*grid, *self.overrides, f"paths.results_dir={suite_dir}"]

    @property
    def label(self) -> str:
        return f"{self.method} {self.data} seed {self.seed}" + (f" ({self.experiment})" if self.experiment else "")


@dataclass
class PlannedJob:
    job: Job
    run_dir: Path
    config_hash: str
    dataset: str
    category: str
    done: bool = False
    resources: dict[str, Any] = field(default_factory=dict)  # method.resources: what a scheduler should grant
    distributed: bool = False  # trainer=ddp


@dataclass
class SuiteOutcome:
    suite_dir: Path
    skipped: list[PlannedJob] = field(default_factory=list)
    ran: list[tuple[PlannedJob, dict[str, Any]]] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[PlannedJob, dict[str, Any]]]:
        return [(p, r) for p, r in self.ran if r.get("status") != "ok"]


# --------------------------------------------------------------------------------------------- suites


def load_suite(name: str, settings: Sequence[str] = ()) -> DictConfig:
    """conf/suite/<name>.yaml with `key=value` settings (YAML values, e.g. seeds=[0,1,2]) merged in."""
    path = config_dir() / SUITE_GROUP / f"{name}.yaml"
    if not path.is_file():
        raise AnobenchError(f"suite={name}: no {path}; suites: {', '.join(suite_options())}")
    suite = OmegaConf.load(path)
    if settings:
        suite = OmegaConf.merge(suite, OmegaConf.from_dotlist(list(settings)))
    for key in suite.keys():
        if OmegaConf.is_missing(suite, key):
            raise AnobenchError(f"suite {name}: `{key}` is required, e.g. anobench bench suite={name} {key}=<value>")
    for key in ("methods", "categories", "seeds"):
        if not isinstance(suite.get(key), ListConfig) or len(suite[key]) == 0:
            raise AnobenchError(f"suite {name}: `{key}` must be a non-empty list ({path})")
    return suite


def expand(suite: DictConfig, extra_overrides: Sequence[str] = ()) -> list[Job]:
    """The grid: every method × category × seed, with the method's experiment and the overrides."""
    container = OmegaConf.to_container(suite, resolve=True)
    experiment = container.get("experiment")
    overrides = tuple(str(o) for o in (container.get("overrides") or [])) + tuple(extra_overrides)
    known_methods, known_data = group_options("method"), group_options("data")
    known_experiments = group_options("experiment")
    jobs = []
    for method in container["methods"]:
        if method not in known_methods:
            raise AnobenchError(f"suite {container.get('name')}: unknown method {method!r}; methods: {', '.join(known_methods)}")
        if isinstance(experiment, Mapping):
            method_experiment = experiment.get(method)
        else:
            method_experiment = None if experiment is None else str(experiment).format(method=method)
        if method_experiment is not None and method_experiment not in known_experiments:
            raise AnobenchError(f"suite {container.get('name')}: no experiment {method_experiment!r} for {method} "
                                f"(conf/experiment/{method_experiment}.yaml)")
        for data in container["categories"]:
            if data not in known_data:
                raise AnobenchError(f"suite {container.get('name')}: unknown data option {data!r}")
            for seed in container["seeds"]:
                jobs.append(Job(method=method, data=data, seed=int(seed), experiment=method_experiment,
                                overrides=overrides))
    return jobs


# ----------------------------------------------------------------------------------------- composing


def compose_job(job: Job, suite_dir: Path, with_hydra: bool = False) -> DictConfig:
    """The job's train config, exactly as `anobench train <overrides>` would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=job.train_overrides(suite_dir), return_hydra_config=with_hydra)


def plan_job(job: Job, suite_dir: Path) -> PlannedJob:
    from anobench.results.identity import config_hash
    from anobench.tasks.train import uses_ddp

    cfg = compose_job(job, suite_dir)
    digest = config_hash(OmegaConf.to_container(cfg, resolve=True))
    dataset, category = str(cfg.data.dataset), str(cfg.data.category)
    run_dir = suite_dir / "runs" / job.method / dataset / category / f"seed{job.seed}" / digest
    resources = OmegaConf.to_container(cfg.method.resources, resolve=True) if "resources" in cfg.method else {}
    return PlannedJob(job=job, run_dir=run_dir, config_hash=digest, dataset=dataset, category=category,
                      resources=dict(resources or {}), distributed=uses_ddp(cfg.trainer))


def is_complete(run_dir: Path, digest: str) -> bool:
    """A finished run of the same config: a readable result.json, status ok, the same config hash."""
    from anobench.results.identity import config_hash
    from anobench.results.record import RESULT_FILE, read_result

    try:
        record = read_result(run_dir / RESULT_FILE)
    except ValueError:
        return False
    stored = record.get("config_hash") or config_hash(record.get("config") or {})
    return record["status"] == "ok" and stored == digest


def move_aside(run_dir: Path, suite_dir: Path, stamp: str) -> Path:
    """Move a half-finished, failed or superseded run folder out of runs/ (the leaderboard's input)."""
    target = suite_dir / STALE_FOLDER / stamp / run_dir.relative_to(suite_dir / "runs")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(target))
    return target


def plan(jobs: Sequence[Job], suite_dir: Path, clean: bool = True) -> list[PlannedJob]:
    """Compose every job, mark the complete ones, and (clean=True) move aside what must be redone."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    planned = []
    for job in jobs:
        item = plan_job(job, suite_dir)
        item.done = is_complete(item.run_dir, item.config_hash)
        if clean:
            cell = item.run_dir.parent
            for sibling in sorted(cell.iterdir()) if cell.is_dir() else []:
                if sibling.is_dir() and (sibling != item.run_dir or not item.done):
                    print(f"moved aside {move_aside(sibling, suite_dir, stamp)} "
                          f"({'not finished or failed' if sibling == item.run_dir else 'another config'})")
        planned.append(item)
    return planned


# ------------------------------------------------------------------------------------------- running


def run_suite(suite: DictConfig, results_dir: str | Path, extra_overrides: Sequence[str] = (), n_jobs: int = 1,
              dry_run: bool = False, launcher: Sequence[str] = ()) -> SuiteOutcome:
    """Expand, resume, run what is left through the Hydra launcher, rebuild the suite's leaderboard.

    `launcher`: Hydra overrides choosing and configuring the launcher (hydra/launcher=..., hydra.launcher.*);
    `n_jobs` > 1 is shorthand for joblib with that many workers.
    """
    from anobench.results.publish import write_leaderboard
    from anobench.io import folder_lock
    from anobench.tasks.launch import WORKERS_LOCK, launch, launcher_overrides

    suite_dir = Path(results_dir) / SUITES_FOLDER / str(suite.name)
    jobs = expand(suite, extra_overrides)
    launch_overrides = launcher_overrides(launcher, n_jobs)
    outcome = SuiteOutcome(suite_dir=suite_dir)
    if dry_run:
        for item in plan(jobs, suite_dir, clean=False):
            print(f"{'done' if item.done else 'todo'}  {item.job.label}  -> {item.run_dir}")
        return outcome
    busy = f"suite {suite.name} is already running in another process ({suite_dir})"
    with folder_lock(suite_dir, ".suite.lock", busy_message=busy):
        with folder_lock(suite_dir, WORKERS_LOCK, busy_message=f"{busy}: workers of an earlier, killed "
                                                               "`anobench bench` are still finishing their job"):
            planned = plan(jobs, suite_dir)
        todo = [p for p in planned if not p.done]
        outcome.skipped = [p for p in planned if p.done]
        print(f"suite {suite.name}: {len(planned)} job(s), {len(outcome.skipped)} already complete, "
              f"{len(todo)} to run ({suite_dir})", flush=True)
        for number, (item, record) in enumerate(zip(todo, launch(todo, suite_dir, launch_overrides)), 1):
            outcome.ran.append((item, record))
            print(f"[{number}/{len(todo)}] {item.job.label}: {record.get('status')}", flush=True)
        if (suite_dir / "runs").is_dir():
            write_leaderboard(suite_dir)
    return outcome


# ----------------------------------------------------------------------------------------------- CLI


def bench_command(args: Sequence[str]) -> int:
    """anobench bench suite=<name> [results_dir=DIR] [n_jobs=N | hydra/launcher=X hydra.launcher.k=v]
    [dry_run=true] [suite keys] [train overrides]"""
    from anobench.results.leaderboard import print_leaderboard
    from anobench.results.publish import write_leaderboard

    control: dict[str, str] = {}
    rest = []
    from anobench.tasks.launch import is_launcher_override

    launcher = [a for a in args if is_launcher_override(a)]
    for arg in (a for a in args if not is_launcher_override(a)):
        key, sep, value = arg.partition("=")
        if not sep:
            raise AnobenchError(f"anobench bench: expected key=value, got {arg!r} (e.g. suite=synthetic_quick)")
        if key in CONTROL_KEYS:
            control[key] = value
        else:
            rest.append(arg)
    if "suite" not in control:
        raise AnobenchError(f"anobench bench: give suite=<name>; suites: {', '.join(suite_options())}")
    raw = OmegaConf.load(config_dir() / SUITE_GROUP / f"{control['suite']}.yaml") \
        if (config_dir() / SUITE_GROUP / f"{control['suite']}.yaml").is_file() else OmegaConf.create()
    suite_keys = set(SUITE_KEYS) | set(raw.keys())
    settings = [a for a in rest if a.partition("=")[0].split(".")[0] in suite_keys]
    overrides = [a for a in rest if a not in settings]
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key in GRID_KEYS:
            raise AnobenchError(f"anobench bench: {key}= is set per job by the suite; use "
                                f"{GRID_KEYS[key]}=... (e.g. {GRID_KEYS[key]}=[...]) instead")
    suite = load_suite(control["suite"], settings)
    results_dir = control.get("results_dir") or str(default_results_dir())
    n_jobs = int(control.get("n_jobs", 1))
    dry_run = control.get("dry_run", "false").lower() in ("1", "true", "yes")
    os.environ.setdefault("ANOBENCH_COMMAND", " ".join(["anobench", "bench", *args]))
    outcome = run_suite(suite, results_dir, overrides, n_jobs=n_jobs, dry_run=dry_run, launcher=launcher)
    if dry_run:
        return 0
    if (outcome.suite_dir / "runs").is_dir():
        board = write_leaderboard(outcome.suite_dir)
        print_leaderboard(board)
        print(f"leaderboard: {outcome.suite_dir / 'leaderboard.md'}")
    for item, record in outcome.failed:
        error = record.get("error") or {}
        print(f"failed: {item.job.label}: {error.get('type')}: {error.get('message')} ({item.run_dir})", file=sys.stderr)
    print(f"{len(outcome.skipped)} job(s) already complete, {len(outcome.ran) - len(outcome.failed)} ran ok, "
          f"{len(outcome.failed)} failed")
    return 1 if outcome.failed else 0
