"""What makes two runs "the same run": a hash of the resolved config without where-things-live keys.

`anobench bench` uses it to decide whether a suite job is already done (same hash, status ok) and to
name the job's run folder, so a re-run finds it. Paths are left out so that moving the results or
data folder (or running from another directory) does not invalidate finished work; nor does asking a scheduler for more time or memory.
A path that stays in the config (e.g. Uninformed Students' teacher cache under `paths.data_dir`) is hashed as
it reads under the root's default (`data/teachers`), whether the run spelled it relative, absolute
(`ANOBENCH_DATA_DIR=/scratch/data`) or portably (`${paths.data_dir}/teachers`, as result.json records it).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

from anobench.results.pathnames import (PATHS_KEY, looks_like_path, named_roots, root_default, split_root_reference,
                                        under_root)

# Dotted keys that say where things live, what a scheduler grants, how fast or what is exported, not what is computed.
VOLATILE_KEYS = ("paths", "data.root", "hydra", "method.resources", "malloc_keep_freed", "export",
                 # decision thresholds are read off the outcome after the metrics; they change no metric
                 "threshold", "threshold_quantile")
# Dotted keys that change what is computed, but only away from their neutral value: at it they are left out,
# so the runs recorded before the key existed keep their hash (tests/test_identity.py checks the committed results).
NEUTRAL_DEFAULTS: dict[str, Any] = {"data.holdout_normal": 0, "data.interpolation": "bilinear"}


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (first 12 hex digits) of a resolved config (plain containers) minus VOLATILE_KEYS and minus the
    NEUTRAL_DEFAULTS keys that hold their neutral value."""
    stripped = copy.deepcopy(dict(config))
    paths = stripped.get(PATHS_KEY)
    names, roots = set(paths) if isinstance(paths, Mapping) else set(), named_roots(paths)
    for dotted in (*VOLATILE_KEYS, *NEUTRAL_DEFAULTS):
        *parents, leaf = dotted.split(".")
        node: Any = stripped
        for key in parents:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, dict) and leaf in node and (dotted in VOLATILE_KEYS or _neutral(dotted, node[leaf])):
            node.pop(leaf)
    text = json.dumps(_under_default_roots(stripped, names, roots), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _neutral(dotted: str, value: Any) -> bool:
    """Whether `value` is the key's neutral value (0 and 0.0 alike; a bool never is)."""
    return not isinstance(value, bool) and value == NEUTRAL_DEFAULTS[dotted]


def _hashed_root(name: str) -> str:
    """How a path under root `name` is hashed: under the root's default ('data'), else `${paths.<name>}`."""
    return root_default(name) or f"${{{PATHS_KEY}.{name}}}"


def _under_default_roots(value: Any, names: set[str], roots: list[tuple[str, str]]) -> Any:
    """`value` with every path under a root (`names`: the paths block's roots; `roots`: the resolved ones)
    written under the root's default (module doc)."""
    if isinstance(value, dict):
        return {key: _under_default_roots(item, names, roots) for key, item in value.items()}
    if isinstance(value, list):
        return [_under_default_roots(item, names, roots) for item in value]
    if not isinstance(value, str):
        return value
    if value.startswith(f"${{{PATHS_KEY}."):
        name, rest = split_root_reference(value)
        return _hashed_root(name) + rest if name in names else value
    placed = under_root(value, roots, relative_too=True) if looks_like_path(value) else None
    return value if placed is None else _hashed_root(placed[0]) + placed[1]
