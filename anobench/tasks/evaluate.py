"""`anobench eval checkpoint=...`: re-test a saved model and write a new result.json.

The training run's resolved config (config.yaml beside checkpoints/) rebuilds the method and the data,
so a checkpoint is evaluated exactly as it was trained; `data_root`, `seed` and `evaluation.*` may be
overridden (e.g. data moved, or evaluation at model resolution).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from anobench.errors import ConfigError
from anobench.results.record import RESULT_FILE
from anobench.tasks.train import (
    base_record, build_run, build_trainer, run_dir_from_hydra, run_recorded, run_test_and_record,
)
from anobench.visualize.task import eval_visualize_settings


def load_run_config(checkpoint: Path) -> DictConfig:
    """The resolved config of the run that wrote `checkpoint` (<run>/checkpoints/<name>.ckpt)."""
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint={checkpoint}: no such file (expected <run dir>/checkpoints/last.ckpt)")
    config_path = checkpoint.resolve().parent.parent / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"checkpoint={checkpoint}: the run's config {config_path} is missing; "
                          "anobench eval needs the run folder written by anobench train")
    return OmegaConf.load(config_path)


def apply_overrides(run_cfg: DictConfig, overrides: DictConfig | dict) -> None:
    """Set each dotted key of `overrides` (nested) in the run's config; a key the run lacks is an error."""
    flat = _flatten(OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig) else overrides)
    for key, value in flat.items():
        if OmegaConf.select(run_cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"overrides.{key}: the run's config has no key {key!r} "
                              "(anobench eval only changes settings the trained run already has)")
        OmegaConf.update(run_cfg, key, value, merge=False)


_MISSING = object()


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Re-test the model in `cfg.checkpoint` and record the result."""
    checkpoint = Path(cfg.checkpoint)
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
    apply_overrides(run_cfg, cfg.get("overrides") or {})

    run_dir = run_dir_from_hydra()
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run_cfg, run_dir / "config.yaml", resolve=True)
    record = base_record(run_cfg, "eval")
    record["source_checkpoint"] = str(checkpoint.resolve())
    trained = checkpoint.resolve().parent.parent / RESULT_FILE
    record["budget"] = json.loads(trained.read_text()).get("budget", {}) if trained.is_file() else {"label": "unknown"}

    def body(timings: dict[str, float]) -> None:
        datamodule, module = build_run(run_cfg)
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        if state.get("global_step") is not None:  # a step<N>.ckpt holds fewer steps than the run that wrote it
            record["budget"] = {**record["budget"], "global_step": int(state["global_step"])}
        trainer = build_trainer(run_cfg.trainer, run_dir, logger=False)
        run_test_and_record(trainer, module, datamodule, record, run_cfg, run_dir, timings)

    return run_recorded(record, run_dir, run_cfg, body)
