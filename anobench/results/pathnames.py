"""Path names as text: the named roots of conf/paths/default.yaml and lexical path tests, shared by what a run
is (identity.py: a path under a root hashes the same wherever the root lies) and how it is recorded
(portable.py: a path under a root is recorded as `${paths.<name>}/<rest>`). Nothing here touches the disk."""

from __future__ import annotations

import ntpath
import os
import posixpath
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from anobench.config import config_dir

PATHS_KEY = "paths"
# `${oc.env:ANOBENCH_DATA_DIR,data}`: the environment variable and the default when it is unset
ENV_DEFAULT = re.compile(r"^\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}$")


@lru_cache(maxsize=1)
def default_paths() -> dict[str, Any]:
    """conf/paths/default.yaml, unresolved: root name -> its interpolation."""
    return OmegaConf.to_container(OmegaConf.load(config_dir() / PATHS_KEY / "default.yaml"), resolve=False)


def root_default(name: str) -> str | None:
    """What root `name` is when its environment variable is unset ('data' for data_dir); None when that is
    null or `name` is no root of conf/paths/default.yaml."""
    match = ENV_DEFAULT.match(str(default_paths().get(name, "")))
    value = (match.group(2) or "").strip() if match else ""
    return None if value in ("", "null", "None") else value


def is_absolute(value: str) -> bool:
    return posixpath.isabs(value) or bool(ntpath.splitdrive(value)[0]) or value.startswith("~")


def looks_like_path(value: str) -> bool:
    return is_absolute(value) or "/" in value or "\\" in value


def absolute(value: str) -> str:
    """Lexically normalised absolute form with '/' separators (no symlinks resolved: paths as written)."""
    path = os.path.expanduser(value)
    path = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    return Path(os.path.normpath(path)).as_posix()


def contains(root: str, path: str) -> bool:
    """`path` is `root` or lies under it (both absolute, as `absolute` writes them)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def named_roots(paths: Any) -> list[tuple[str, str]]:
    """(name, absolute normalised root) of every usable root of a resolved paths block, longest first; an
    unresolved or URL value is no root here, and a root of "/" is no information."""
    roots = []
    for name, value in paths.items() if isinstance(paths, Mapping) else ():
        if isinstance(value, str) and value and "${" not in value and "://" not in value:
            root = absolute(value)
            if posixpath.dirname(root) != root:
                roots.append((name, root))
    return sorted(roots, key=lambda item: len(item[1]), reverse=True)


def under_root(value: str, roots: list[tuple[str, str]], relative_too: bool) -> tuple[str, str] | None:
    """(name, '' or '/<rest>') of the longest root holding `value`, else None; a relative value only with
    `relative_too`, and only under a root that does not hold the working directory (any relative path would
    lie under such a root, which says nothing)."""
    if not value or "${" in value or "://" in value:
        return None
    if ntpath.splitdrive(value)[0] and os.name != "nt":  # a Windows path recorded elsewhere: not ours to place
        return None
    absolute_value = is_absolute(value)
    if not absolute_value and not relative_too:
        return None
    target = absolute(value)
    cwd = absolute(os.getcwd())
    for name, root in roots:
        if not absolute_value and contains(root, cwd):
            continue
        if contains(root, target):
            rest = posixpath.relpath(target, root)
            return name, "" if rest == "." else f"/{rest}"
    return None


def split_root_reference(text: str) -> tuple[str, str]:
    """'${paths.mvtec_root}/bottle' -> ('mvtec_root', '/bottle')."""
    head, _, rest = text.partition("}")
    return head.removeprefix(f"${{{PATHS_KEY}."), rest
