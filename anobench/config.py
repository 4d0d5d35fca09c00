"""Where the Hydra configs live, and what options each config group offers."""

from __future__ import annotations

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


def group_options(group: str, root: Path | None = None) -> list[str]:
    """Options of a config group, as typed on the command line (e.g. 'mvtec/bottle' for data)."""
    base = (root or config_dir()) / group
    return sorted(p.relative_to(base).with_suffix("").as_posix() for p in base.rglob("*.yaml"))
