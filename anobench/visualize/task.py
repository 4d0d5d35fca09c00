"""Glue between a train/eval task and the figure writer: settings from the config, errors kept off the result."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from anobench.errors import ConfigError
from anobench.visualize.figures import FIGURES_DIR, write_run_figures

DEFAULT_MAX_PER_DEFECT = 3


def visualization_settings(cfg: DictConfig) -> tuple[bool, int]:
    """(enabled, max_per_defect) from ``cfg.visualize``; ``enabled: auto`` = on except with trainer=smoke."""
    settings = cfg.get("visualize") or {}
    enabled = settings.get("enabled", "auto")
    max_per_defect = settings.get("max_per_defect", DEFAULT_MAX_PER_DEFECT)
    if enabled is None or enabled == "auto":
        enabled = cfg.trainer.get("name") != "smoke"
    if not isinstance(enabled, bool):
        raise ConfigError(f"visualize.enabled={enabled!r} is invalid; expected true, false or auto")
    if max_per_defect is None:
        max_per_defect = DEFAULT_MAX_PER_DEFECT
    if not isinstance(max_per_defect, int) or isinstance(max_per_defect, bool) or max_per_defect < 0:
        raise ConfigError(f"visualize.max_per_defect={max_per_defect!r} is invalid; expected an integer >= 0")
    return enabled, max_per_defect


def eval_visualize_settings(run_cfg: DictConfig, eval_cfg: DictConfig) -> dict[str, Any]:
    """The visualize block of an eval: the eval's non-null keys over the training run's (older runs have none)."""
    run_settings = run_cfg.get("visualize") or {}
    eval_settings = eval_cfg.get("visualize") or {}
    return {key: eval_settings.get(key) if eval_settings.get(key) is not None else run_settings.get(key)
            for key in ("enabled", "max_per_defect")}


def record_figures(record: dict[str, Any], cfg: DictConfig, run_dir: Path, module: Any, datamodule: Any,
                   timings: dict[str, float]) -> None:
    """Write the run's figures when enabled and note them in ``record["figures"]``.

    A figure that cannot be drawn must not cost the run its metrics: the error is recorded and printed.
    """
    enabled, max_per_defect = visualization_settings(cfg)
    if not enabled:
        record["figures"] = {"enabled": False}
        return
    start = time.perf_counter()
    keep = list(getattr(module, "evaluated_indices", range(len(datamodule.test_samples))))
    try:
        manifest = write_run_figures(
            run_dir, module.test_maps, module.test_scores, [datamodule.test_samples[i] for i in keep],
            lambda j: datamodule.load_mask(keep[j]),
            module.test_results, max_per_defect=max_per_defect,
            title=f"{cfg.method.name} on {cfg.data.dataset}/{cfg.data.category}, seed {cfg.seed}",
        )
        record["figures"] = {
            "enabled": True,
            "dir": FIGURES_DIR,
            "panels": [f"{FIGURES_DIR}/{p['file']}" for p in manifest["panels"]],
            "curves": f"{FIGURES_DIR}/{manifest['curves']}",
            "colour_scale": manifest["colour_scale"],
            "max_per_defect": max_per_defect,
        }
    except Exception as error:  # noqa: BLE001 - any drawing problem is reported, never fatal
        print(f"warning: could not write the figures of {run_dir}: {type(error).__name__}: {error}")
        record["figures"] = {"enabled": True, "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc()[-4000:]}
    timings["figures_s"] = time.perf_counter() - start
