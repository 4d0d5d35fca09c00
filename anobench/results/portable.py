"""Configs and paths as they read on any machine: named roots instead of this machine's folders.

conf/paths/default.yaml names the roots a run reads from or writes to (`results_dir`, `data_dir`,
`mvtec_root`), each from an environment variable with a default. A resolved config spells them out
(`data.root: /data/mvtec_ad`), which is true only on the machine that ran it. What a run records
(config.yaml, result.json) is therefore made portable:

* the `paths` block keeps its unresolved interpolations (`${oc.env:ANOBENCH_MVTEC_ROOT,null}`); a root given
  as a literal absolute path (e.g. `paths.mvtec_root=/data/mvtec_ad` on the command line) is recorded relative
  to the working directory when it lies inside it, else as its default from conf/paths/default.yaml (the
  environment variable says where it is on the next machine); a relative literal (`results/suites/x`) as it is;
* a value that equals a resolved root or lies under it becomes `${paths.<name>}` or `${paths.<name>}/<rest>`
  (the longest root wins). Absolute values are rewritten wherever they are; relative ones (already
  machine-independent) only in the keys that say where data lives (`identity.VOLATILE_KEYS`, e.g.
  `data.root: data/synthetic` -> `${paths.data_dir}/synthetic`), so that
  `config_hash(portable_config(cfg)) == config_hash(resolved cfg)` (config_hash reads a path under a root the
  same way in either form).

The result loads back with `OmegaConf.create` / `OmegaConf.load` and resolves on another machine from its
environment: set ANOBENCH_MVTEC_ROOT there and `data.root` follows. A relative path (value or root) is
relative to the working directory the run was started from, as everywhere in anobench.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from anobench.results.identity import VOLATILE_KEYS
from anobench.results.pathnames import (ENV_DEFAULT, PATHS_KEY, absolute, contains, default_paths, is_absolute,
                                        looks_like_path, named_roots, under_root)


def portable_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as plain containers, with named roots instead of this machine's paths (module doc)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(resolved, dict) or not isinstance(resolved.get(PATHS_KEY), dict):
        return resolved
    roots = named_roots(resolved[PATHS_KEY])
    out = {key: _rewrite(value, roots, key) for key, value in resolved.items() if key != PATHS_KEY}
    out[PATHS_KEY] = _paths_block(cfg)
    return {key: out[key] for key in resolved}  # the config's own key order


def portable_path(path: str | os.PathLike, cfg: DictConfig) -> str:
    """One path (e.g. a checkpoint) as `${paths.<name>}/<rest>` when it lies under a named root, else unchanged."""
    text = os.fspath(path)
    return _reference(under_root(text, named_roots(_resolved_paths(cfg)), relative_too=True)) or text


def resolve_recorded_path(value: str, record: Mapping[str, Any]) -> Path:
    """A path a result.json recorded portably (`${paths.results_dir}/...`), resolved on this machine from the
    record's own `config.paths` block and the environment; a plain path comes back as it is."""
    if "${" not in value:
        return Path(value)
    paths = ((record.get("config") or {}).get(PATHS_KEY)) or default_paths()
    return Path(str(OmegaConf.create({PATHS_KEY: dict(paths), "value": value}).value))


def portable_command(command: str | None, cfg: DictConfig) -> str | None:
    """A recorded command line with every absolute path under a named root written as `$<ENV VAR>/<rest>`.

    The variable is the one the root's default reads (`paths.mvtec_root=$ANOBENCH_MVTEC_ROOT`), so the
    line still runs in a shell where it is set; a root without one is written `<name>/<rest>`.
    """
    if not command:
        return command
    roots = named_roots(_resolved_paths(cfg))
    words = []
    for word in command.split(" "):
        key, eq, value = word.rpartition("=")
        placed = under_root(value, roots, relative_too=False) if is_absolute(value) else None
        if placed is not None:
            name, rest = placed
            match = ENV_DEFAULT.match(str(default_paths().get(name, "")))
            head = f"${match.group(1)}" if match else f"<{name}>"
            value = head + rest
        words.append(f"{key}{eq}{value}")
    return " ".join(words)


# ------------------------------------------------------------------------------------------- internals


def _resolved_paths(cfg: DictConfig) -> dict[str, Any]:
    paths = cfg.get(PATHS_KEY) if isinstance(cfg, DictConfig) else None
    return OmegaConf.to_container(paths, resolve=True) if isinstance(paths, DictConfig) else {}


def _paths_block(cfg: DictConfig) -> dict[str, Any]:
    block = OmegaConf.to_container(cfg[PATHS_KEY], resolve=False)
    defaults = default_paths()
    cwd = absolute(os.getcwd())
    for name, value in block.items():
        if isinstance(value, str) and "${" not in value and is_absolute(value):
            literal = absolute(value)
            if contains(cwd, literal):  # inside the working directory: relative to it, as a relative root is
                block[name] = posixpath.relpath(literal, cwd)
            elif name in defaults:
                block[name] = defaults[name]
    return block


def _rewrite(value: Any, roots: list[tuple[str, str]], dotted: str) -> Any:
    if isinstance(value, dict):
        return {key: _rewrite(item, roots, f"{dotted}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_rewrite(item, roots, dotted) for item in value]
    if isinstance(value, str) and looks_like_path(value):
        relative_too = any(dotted == key or dotted.startswith(f"{key}.") for key in VOLATILE_KEYS)
        return _reference(under_root(value, roots, relative_too=relative_too)) or value
    return value


def _reference(placed: tuple[str, str] | None) -> str | None:
    """`${paths.<name>}[/<rest>]` for a value `under_root` placed, else None."""
    return None if placed is None else f"${{{PATHS_KEY}.{placed[0]}}}{placed[1]}"

