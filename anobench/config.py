"""Where the Hydra configs live, and what options each config group offers."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

GROUPS = ("method", "data", "backbone", "trainer", "experiment", "sweep")


def config_dir() -> Path:
    """The conf/ folder: the repo's top-level conf/ in a source checkout or editable install,
    anobench/conf inside an installed wheel."""
    source_tree = Path(__file__).resolve().parent.parent / "conf"
    if (source_tree / "train.yaml").is_file():
        return source_tree
    packaged = Path(str(resources.files("anobench") / "conf"))
    if (packaged / "train.yaml").is_file():
        return packaged
    raise FileNotFoundError(f"anobench configs not found in {source_tree} nor {packaged}; reinstall anobench")


SUITE_GROUP = "suite"     # conf/suite/<name>.yaml: the suites `anobench bench` runs
SUITES_FOLDER = "suites"  # a suite's results: <results_dir>/suites/<name>/


def suite_options() -> list[str]:
    """The suite names `anobench bench suite=<name>` accepts."""
    return group_options(SUITE_GROUP)


def group_options(group: str, root: Path | None = None) -> list[str]:
    """Options of a config group, as typed on the command line (e.g. 'mvtec/bottle' for data)."""
    base = (root or config_dir()) / group
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml"))


# Where user runs go unless `paths.results_dir=` / `--results-dir` / ANOBENCH_RESULTS_DIR says otherwise:
# outputs/ is git-ignored, so a run never touches the committed reference results under results/.
RESULTS_DIR_ENV = "ANOBENCH_RESULTS_DIR"
DEFAULT_RESULTS_DIR = "outputs"
COMMITTED_RESULTS_DIR = "results"  # the committed reference numbers: `anobench leaderboard --results-dir results`

# Set while a Hydra verb (train, eval) runs, so that processes Lightning's DDP launcher starts (same argv,
# no verb) run the same verb. Here, not in cli.py, so tasks need not import the CLI.
VERB_ENV = "ANOBENCH_HYDRA_VERB"


def default_results_dir() -> Path:
    """The results folder of a run, a leaderboard or a bench: $ANOBENCH_RESULTS_DIR, else outputs/."""
    return Path(os.environ.get(RESULTS_DIR_ENV) or DEFAULT_RESULTS_DIR)
