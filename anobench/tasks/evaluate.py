"""`anobench eval checkpoint=...`: re-test a saved model and write a new result.json.

The training run's config (config.yaml beside checkpoints/) rebuilds the method and the data, so a
checkpoint is evaluated exactly as it was trained; `data_root`, `seed`, `evaluation.*`, `visualize.*` and
`overrides.<key>` may change it (e.g. data moved, or evaluation at model resolution).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anobench.config import over_run_settings
from anobench.errors import ConfigError
from anobench.results.record import RESULT_FILE
from anobench.tasks import run
from anobench.tasks.train import hydra_run_dir, is_multirun
from anobench.visualize.task import eval_visualize_settings

_MISSING = object()


def load_run_config(checkpoint: Path) -> DictConfig:
    """The config of the run that wrote `checkpoint` (<run>/checkpoints/<name>.ckpt)."""
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint={checkpoint}: no such file (expected <run dir>/checkpoints/last.ckpt)")
    config_path = checkpoint.resolve().parent.parent / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"checkpoint={checkpoint}: the run's config {config_path} is missing; "
                          "anobench eval needs the run folder written by anobench train")
    return OmegaConf.load(config_path)


def apply_overrides(run_cfg: DictConfig, overrides: DictConfig | dict) -> None:
    """Set each dotted key of `overrides` (nested) in the run's config; a key the run lacks is an error."""
    tree = OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig) else overrides
    for key, value in _flatten(tree).items():
        if OmegaConf.select(run_cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"overrides.{key}: the run's config has no key {key!r} "
                              "(anobench eval only changes settings the trained run already has)")
        OmegaConf.update(run_cfg, key, value, merge=False)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def eval_config(cfg: DictConfig, checkpoint: Path) -> DictConfig:
    """The trained run's config with this eval's settings applied."""
    run_cfg = load_run_config(checkpoint)
    run_cfg.paths.results_dir = cfg.paths.results_dir
    if cfg.seed is not None:
        run_cfg.seed = cfg.seed
    if cfg.data_root is not None:
        run_cfg.data.root = cfg.data_root
    for key in ("resolution", "pro_fpr_limit"):
        if cfg.evaluation[key] is not None:
            run_cfg.evaluation[key] = cfg.evaluation[key]
    run_cfg.visualize = eval_visualize_settings(run_cfg, cfg)
    for key in ("threshold", "threshold_quantile"):  # runs recorded before thresholds existed lack the keys
        if cfg.get(key) is not None:
            run_cfg[key] = cfg[key]
    run_cfg.export = over_run_settings(run_cfg, cfg, "export", ("maps", "dir"))
    apply_overrides(run_cfg, cfg.get("overrides") or {})
    return run_cfg


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Re-test the model in `cfg.checkpoint` and record the result."""
    checkpoint = Path(cfg.checkpoint)
    run_cfg = eval_config(cfg, checkpoint)
    trained = checkpoint.resolve().parent.parent / RESULT_FILE
    budget = json.loads(trained.read_text()).get("budget", {}) if trained.is_file() else {"label": "unknown"}
    source = {"source_checkpoint": run.portable_path(checkpoint.resolve(), run_cfg), "budget": budget}
    return run.execute(run_cfg, hydra_run_dir(), "eval", checkpoint=checkpoint, record=source,
                       reraise=not is_multirun())
