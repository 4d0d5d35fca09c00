"""Suite planning: a suite's grid as jobs, each job's config hash and run folder, and what a re-run resumes.

A suite is `conf/suite/<name>.yaml` (loaded with OmegaConf, not composed into conf/train.yaml):

    name: synthetic_quick            # the results go to <results_dir>/suites/<name>/
    methods: [memae, patch_svdd]     # method= options
    categories: [synthetic/washer]   # data= options
    seeds: [0]
    experiment: "{method}_paper"     # null | a template with {method} | {method: experiment or null}
    overrides: [trainer=smoke]       # extra train overrides for every job

Each job is composed from conf/train.yaml with Hydra's compose API, exactly as `anobench train <overrides>`
would, and gets its own deterministic folder `runs/<method>/<dataset>/<category>/seed<seed>/<config hash>/`
(`anobench.results.identity.config_hash`: the resolved config minus paths). Resuming is therefore a
lookup: a job whose folder holds a result.json with status ok and the same hash is skipped; a folder
without one (a killed run) or with a failed result is moved aside to `stale/` and the job is redone;
ok results of the same grid cell under another hash (the config changed) are moved aside too, so the
suite's leaderboard only shows the current config. Launching the pending jobs is anobench.tasks.launch's.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from anobench.config import SUITE_GROUP, config_dir, dataset_label, group_options, suite_options
from anobench.errors import AnobenchError
from anobench.results.identity import config_hash
from anobench.results.record import RESULT_FILE, read_result
from anobench.tasks.ddp import uses_ddp

# Held (shared) by every running suite job; a re-run of the suite takes it exclusively before moving
# folders aside, so it never moves a folder that workers of a killed `anobench bench` still write to.
WORKERS_LOCK = ".workers.lock"

STALE_FOLDER = "stale"
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
    devices: str = "1"  # trainer.devices as configured (e.g. "auto"): a SLURM launch starts one task per device


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
    cfg = compose_job(job, suite_dir)
    digest = config_hash(OmegaConf.to_container(cfg, resolve=True))
    # the record's dataset (data.name for data=folder): two own datasets with one category name never share a cell
    dataset, category = dataset_label(cfg.data), str(cfg.data.category)
    run_dir = suite_dir / "runs" / job.method / dataset / category / f"seed{job.seed}" / digest
    resources = OmegaConf.to_container(cfg.method.resources, resolve=True) if "resources" in cfg.method else {}
    return PlannedJob(job=job, run_dir=run_dir, config_hash=digest, dataset=dataset, category=category,
                      resources=dict(resources or {}), distributed=uses_ddp(cfg.trainer),
                      devices=str(cfg.trainer.get("devices", "auto")))


def is_complete(run_dir: Path, digest: str) -> bool:
    """A finished run of the same config: a readable result.json, status ok, the same config hash."""
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
