"""What makes two runs "the same run": a hash of the resolved config without where-things-live keys.

`anobench bench` uses it to decide whether a suite job is already done (same hash, status ok) and to
name the job's run folder, so a re-run finds it. Paths are left out so that moving the results or
data folder (or running from another directory) does not invalidate finished work; nor does asking a scheduler for more time or memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

# Dotted keys that say where things live, what a scheduler grants or how fast, not what is computed.
VOLATILE_KEYS = ("paths", "data.root", "hydra", "method.resources", "malloc_keep_freed")


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (first 12 hex digits) of a resolved config (plain containers) minus VOLATILE_KEYS."""
    stripped = copy.deepcopy(dict(config))
    for dotted in VOLATILE_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = stripped
        for key in parents:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = json.dumps(stripped, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
