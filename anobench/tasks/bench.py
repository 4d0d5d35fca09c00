"""`anobench bench suite=<name>`: run a named grid (methods × categories × seeds) and keep one leaderboard.

Planning (the jobs, each job's run folder and config hash, what is already done) is anobench.tasks.plan's;
launching the pending jobs through a Hydra launcher (in this process by default, `n_jobs=N` or
`hydra/launcher=joblib` for local processes, `hydra/launcher=submitit_slurm` for a SLURM cluster) is
anobench.tasks.launch's. Results are written atomically and the suite's leaderboard is published once, at
the end, from the result files, so parallel jobs cannot lose or corrupt rows.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from anobench.config import COMMAND_ENV, SUITE_GROUP, SUITES_FOLDER, config_dir, default_results_dir, suite_options
from anobench.errors import AnobenchError
from anobench.io import folder_lock
from anobench.tasks.launch import is_launcher_override, launch, launcher_overrides
from anobench.tasks.plan import GRID_KEYS, SUITE_KEYS, WORKERS_LOCK, PlannedJob, expand, load_suite, plan
from anobench.results.leaderboard import Leaderboard
from anobench.tasks.publish import publish

# Command-line keys that steer the bench verb itself (everything else is a suite key or a job override).
CONTROL_KEYS = ("suite", "results_dir", "n_jobs", "dry_run")


@dataclass
class SuiteOutcome:
    suite_dir: Path
    skipped: list[PlannedJob] = field(default_factory=list)
    ran: list[tuple[PlannedJob, dict[str, Any]]] = field(default_factory=list)
    board: Leaderboard | None = None  # the suite's published leaderboard (None for a dry run)

    @property
    def failed(self) -> list[tuple[PlannedJob, dict[str, Any]]]:
        return [(p, r) for p, r in self.ran if r.get("status") != "ok"]


# ------------------------------------------------------------------------------------------- running


def run_suite(suite: DictConfig, results_dir: str | Path, extra_overrides: Sequence[str] = (), n_jobs: int = 1,
              dry_run: bool = False, launcher: Sequence[str] = ()) -> SuiteOutcome:
    """Expand, resume, run what is left through the Hydra launcher, rebuild the suite's leaderboard.

    `launcher`: Hydra overrides choosing and configuring the launcher (hydra/launcher=..., hydra.launcher.*);
    `n_jobs` > 1 is shorthand for joblib with that many workers.
    """
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
        if (suite_dir / "runs").is_dir():  # published once, from the result files, whatever the launcher did
            outcome.board = publish(suite_dir)
    return outcome


# ----------------------------------------------------------------------------------------------- CLI


def bench_command(args: Sequence[str]) -> int:
    """anobench bench suite=<name> [results_dir=DIR] [n_jobs=N | hydra/launcher=X hydra.launcher.k=v]
    [dry_run=true] [suite keys] [train overrides]"""
    from anobench.results.render import print_leaderboard

    control: dict[str, str] = {}
    rest = []
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
    os.environ.setdefault(COMMAND_ENV, " ".join(["anobench", "bench", *args]))
    outcome = run_suite(suite, results_dir, overrides, n_jobs=n_jobs, dry_run=dry_run, launcher=launcher)
    if dry_run:
        return 0
    if outcome.board is not None:
        print_leaderboard(outcome.board)
        print(f"leaderboard: {outcome.suite_dir / 'leaderboard.md'}")
    for item, record in outcome.failed:
        error = record.get("error") or {}
        print(f"failed: {item.job.label}: {error.get('type')}: {error.get('message')} ({item.run_dir})", file=sys.stderr)
    print(f"{len(outcome.skipped)} job(s) already complete, {len(outcome.ran) - len(outcome.failed)} ran ok, "
          f"{len(outcome.failed)} failed")
    return 1 if outcome.failed else 0
