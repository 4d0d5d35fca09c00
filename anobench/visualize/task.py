"""What a run's figures need from the config, and writing them without letting a drawing error cost the run."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from anobench.config import is_smoke, over_run_settings
from anobench.errors import ConfigError
from anobench.metrics.evaluate import CategoryEvaluation
from anobench.visualize.figures import FIGURES_DIR, write_run_figures

DEFAULT_MAX_PER_DEFECT = 3


@dataclass(frozen=True)
class VisualizeSettings:
    """``cfg.visualize``, validated: ``enabled: auto`` = on except for smoke runs."""

    enabled: bool
    max_per_defect: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "VisualizeSettings":
        settings = cfg.get("visualize") or {}
        enabled = settings.get("enabled", "auto")
        max_per_defect = settings.get("max_per_defect", DEFAULT_MAX_PER_DEFECT)
        if enabled is None or enabled == "auto":
            enabled = not is_smoke(cfg)
        if not isinstance(enabled, bool):
            raise ConfigError(f"visualize.enabled={enabled!r} is invalid; expected true, false or auto")
        if max_per_defect is None:
            max_per_defect = DEFAULT_MAX_PER_DEFECT
        if not isinstance(max_per_defect, int) or isinstance(max_per_defect, bool) or max_per_defect < 0:
            raise ConfigError(f"visualize.max_per_defect={max_per_defect!r} is invalid; expected an integer >= 0")
        return cls(enabled, max_per_defect)


def eval_visualize_settings(run_cfg: DictConfig, eval_cfg: DictConfig) -> dict[str, Any]:
    """The visualize block of an eval: the eval's non-null keys over the training run's (older runs have none)."""
    return over_run_settings(run_cfg, eval_cfg, "visualize", ("enabled", "max_per_defect"))


def record_figures(run_dir: Path, settings: VisualizeSettings, maps: Sequence[np.ndarray], scores: np.ndarray,
                   samples: Sequence[Any], get_mask: Callable[[int], np.ndarray] | None,
                   evaluation: CategoryEvaluation,
                   title: str, pixel_threshold: float | None = None,
                   threshold_label: str | None = None) -> tuple[dict[str, Any], float]:
    """Write the run's figures when enabled; return (result.json's ``figures`` block, seconds spent).

    A figure that cannot be drawn must not cost the run its metrics: the error is recorded and printed.
    """
    if not settings.enabled:
        return {"enabled": False}, 0.0
    start = time.perf_counter()
    try:
        manifest = write_run_figures(run_dir, maps, scores, samples, get_mask, evaluation,
                                     max_per_defect=settings.max_per_defect, title=title,
                                     pixel_threshold=pixel_threshold, threshold_label=threshold_label)
        block = {
            "enabled": True,
            "dir": FIGURES_DIR,
            "panels": [f"{FIGURES_DIR}/{p['file']}" for p in manifest["panels"]],
            "curves": f"{FIGURES_DIR}/{manifest['curves']}",
            "colour_scale": manifest["colour_scale"],
            "max_per_defect": settings.max_per_defect,
        }
    except Exception as error:  # noqa: BLE001 - any drawing problem is reported, never fatal
        print(f"warning: could not write the figures of {run_dir}: {type(error).__name__}: {error}")
        block = {"enabled": True, "error": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc()[-4000:]}
    return block, time.perf_counter() - start
