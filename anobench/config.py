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

# Every environment variable anobench reads or sets, named once.
MVTEC_ROOT_ENV = "ANOBENCH_MVTEC_ROOT"  # folder holding the 15 MVTec AD category folders (paths.mvtec_root)
# Folders holding each dataset's categories (paths.visa_root, ...; also `anobench data download`'s default --root).
VISA_ROOT_ENV = "ANOBENCH_VISA_ROOT"
BTAD_ROOT_ENV = "ANOBENCH_BTAD_ROOT"
MPDD_ROOT_ENV = "ANOBENCH_MPDD_ROOT"
DATASET_ROOT_ENVS = {"mvtec": MVTEC_ROOT_ENV, "visa": VISA_ROOT_ENV, "btad": BTAD_ROOT_ENV, "mpdd": MPDD_ROOT_ENV}
DATA_DIR_ENV = "ANOBENCH_DATA_DIR"  # generated synthetic categories go to <it>/synthetic (paths.data_dir)
OFFLINE_ENV = "ANOBENCH_OFFLINE"  # set: never try to download pretrained weights
# Set while a Hydra verb (train, eval) runs, so that processes Lightning's DDP launcher starts (same argv,
# no verb) run the same verb. Here, not in cli.py, so tasks need not import the CLI.
VERB_ENV = "ANOBENCH_HYDRA_VERB"
JOB_LOG_ENV = "ANOBENCH_JOB_LOG"  # set by the CLI: every job of a train/eval command appends its result path
COMMAND_ENV = "ANOBENCH_COMMAND"  # the command line that started the run, recorded in result.json


def register_resolvers() -> None:
    """``${anobench:<name>}`` in a config reads a protocol setting from anobench/protocol.py (its one definition)."""
    from omegaconf import OmegaConf

    from anobench.protocol import PROTOCOL

    def protocol(name: str) -> object:
        if name not in PROTOCOL:
            raise KeyError(f"${{anobench:{name}}}: no such protocol setting; expected one of {sorted(PROTOCOL)}")
        return PROTOCOL[name]

    if not OmegaConf.has_resolver("anobench"):
        OmegaConf.register_new_resolver("anobench", protocol)

    def folder_name(root: object) -> str:
        """``${anobench.folder_name:${data.root}}``: data=folder's default category, the root folder's own name
        (``custom`` while no root is given)."""
        if root is None or str(root) == "":
            return "custom"
        return Path(str(root)).expanduser().resolve().name or "custom"

    if not OmegaConf.has_resolver("anobench.folder_name"):
        OmegaConf.register_new_resolver("anobench.folder_name", folder_name)


def over_run_settings(run_cfg, eval_cfg, block: str, keys: tuple[str, ...]) -> dict:  # noqa: ANN001 - DictConfigs
    """`block` of a re-test (eval): each of `keys` from the eval's config where it is set (not null), else the
    trained run's (None when a run recorded before the block existed lacks it)."""
    run_settings = run_cfg.get(block) or {}
    eval_settings = eval_cfg.get(block) or {}
    return {key: eval_settings.get(key) if eval_settings.get(key) is not None else run_settings.get(key)
            for key in keys}


BUILTIN_DATASETS = ("mvtec", "visa", "btad", "mpdd", "synthetic")  # data.dataset values with their own loader


def dataset_label(data) -> str:  # noqa: ANN001 - a run's `data` DictConfig or a plain mapping
    """The dataset a run's result belongs to (its leaderboard section and Mean): ``data.name`` where the data
    config names one (``data=folder``: the user's own dataset), else ``data.dataset`` (mvtec, visa, ...)."""
    name = data.get("name") if hasattr(data, "get") else None
    return str(name) if name else str(data["dataset"])


def is_smoke(cfg) -> bool:  # noqa: ANN001 - a run's DictConfig
    """A smoke run (conf/trainer/smoke.yaml sets ``trainer.smoke: true``): labelled "smoke", no figures by default."""
    return bool(cfg.trainer.get("smoke", False))


# Keys of conf/trainer/*.yaml that are anobench's, not lightning.Trainer arguments.
TRAINER_OWN_KEYS = ("name", "smoke", "data_workers")  # data_workers: the data configs' num_workers (gpu.yaml)


def default_results_dir() -> Path:
    """The results folder of a run, a leaderboard or a bench: $ANOBENCH_RESULTS_DIR, else outputs/."""
    return Path(os.environ.get(RESULTS_DIR_ENV) or DEFAULT_RESULTS_DIR)
