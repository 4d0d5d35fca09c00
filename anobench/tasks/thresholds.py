"""Decision thresholds, image-level and pixel-level: chosen in the record stage, kept in result.json, used by
`anobench predict` (score >= threshold = defective) and drawn in the run's panels (map >= pixel threshold).

Config (conf/train.yaml, conf/eval.yaml; not part of the config hash: no metric depends on them):

    threshold: none              no decision threshold (the default)
    threshold: 0.5               this number for the image score and the map
    threshold: {image: 0.5, pixel: 0.3}
    threshold: normal_quantile   the `threshold_quantile` (q, default 0.99) quantile of the image scores and of the
                                 map pixels of normal images held out of training (needs data.holdout_normal > 0)
    threshold: f1_test           the F1-optimal thresholds on the labelled test set (`CategoryEvaluation.f1_thresholds`):
                                 optimistic, chosen on the data they are scored on, and marked so everywhere; a
                                 dataset without masks has no pixel F1: the pixel threshold is null, with the reason

result.json: ``thresholds: {image: {value, mode, optimistic, ...}, pixel: {...}}`` (absent with ``none``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import lightning as L
import numpy as np
from omegaconf import DictConfig, OmegaConf

from anobench.data.datamodule import AnomalyDataModule
from anobench.errors import ConfigError
from anobench.methods.base import AnomalyModule
from anobench.metrics.evaluate import CategoryEvaluation
from anobench.results.export import map_at_image_size
from anobench.tasks.inference import Inference, score_loader

LEVELS = ("image", "pixel")
DEFAULT_QUANTILE = 0.99
OPTIMISTIC_NOTE = "optimistic: chosen on the labelled test set it is scored on"
NO_PIXEL_F1_NOTE = "skipped: the pixel F1 needs ground-truth masks and the dataset has none"
HOLDOUT_HINT = ("hold normal images out of training to enable it: data.holdout_normal=0.1 (a fraction of "
                "train/good) or data.holdout_normal=10 (a count); the default 0 keeps the papers' protocol")


def fixed_values(value: Any, name: str = "threshold") -> dict[str, float]:
    """A number (both levels) or {image: number, pixel: number} (either may be left out) as {level: float}."""
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(LEVELS))
        if unknown or not value:
            raise ConfigError(f"{name}={value!r}: expected a number or {{image: <number>, pixel: <number>}}")
        return {level: _number(value[level], f"{name}.{level}") for level in LEVELS if value.get(level) is not None}
    return {level: _number(value, name) for level in LEVELS}


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(f"{name}={value!r} is invalid; expected a finite number, none, normal_quantile or f1_test")
    return float(value)


@dataclass(frozen=True)
class ThresholdSetting:
    """`cfg.threshold` and `cfg.threshold_quantile`, validated (`from_config` fails before any training)."""

    mode: str = "none"
    values: dict[str, float] = field(default_factory=dict)  # mode "fixed"
    q: float = DEFAULT_QUANTILE

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "ThresholdSetting":
        value = cfg.get("threshold", "none")
        q = cfg.get("threshold_quantile", DEFAULT_QUANTILE)
        q = DEFAULT_QUANTILE if q is None else q
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < float(q) < 1.0:
            raise ConfigError(f"threshold_quantile={q!r} is invalid; expected a number in (0, 1), e.g. 0.99")
        if value is None or value == "none":
            return cls("none", q=float(q))
        if value in ("normal_quantile", "f1_test"):
            holdout = (cfg.get("data") or {}).get("holdout_normal") or 0
            if value == "normal_quantile" and not holdout:
                raise ConfigError(f"threshold=normal_quantile needs normal images held out of training, and "
                                  f"data.holdout_normal is 0; {HOLDOUT_HINT}")
            return cls(str(value), q=float(q))
        if isinstance(value, str):
            raise ConfigError(f"threshold={value!r} is invalid; expected none, a number, {{image: <number>, "
                              "pixel: <number>}, normal_quantile or f1_test")
        return cls("fixed", fixed_values(value), float(q))


@dataclass(frozen=True)
class Threshold:
    """One decision threshold: score (or map value) >= `value` is called defective."""

    value: float | None  # None: undefined (e.g. F1 on a test set without defects)
    mode: str
    optimistic: bool = False
    detail: dict[str, Any] = field(default_factory=dict)  # q, n_images, note

    def as_record(self) -> dict[str, Any]:
        return {"value": self.value, "mode": self.mode, "optimistic": self.optimistic, **self.detail}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Threshold":
        detail = {k: v for k, v in record.items() if k not in ("value", "mode", "optimistic")}
        value = record.get("value")
        return cls(None if value is None else float(value), str(record.get("mode")), bool(record.get("optimistic")),
                   detail)


@dataclass
class HoldoutScores:
    """The held-out normal images scored after the test as `anobench predict` scores images."""

    scores: np.ndarray  # image scores (the test set's score reference applied)
    maps: list[np.ndarray]  # at each image's original resolution
    seconds: float = 0.0


def score_holdout(module: AnomalyModule, datamodule: AnomalyDataModule, trainer: L.Trainer,
                  reference: dict[str, float]) -> HoldoutScores | None:
    """Score `datamodule.holdout_samples` (None without a holdout) with the inference state rebuilt as predict does."""
    samples = datamodule.holdout_samples
    if not samples:
        return None
    start = time.perf_counter()
    maps, scores = score_loader(Inference(module, datamodule, trainer), datamodule.holdout_dataloader(), reference)
    full = [map_at_image_size(anomaly_map, sample.image_path) for sample, anomaly_map in zip(samples, maps)]
    return HoldoutScores(scores=scores, maps=full, seconds=time.perf_counter() - start)


def decision_thresholds(setting: ThresholdSetting, evaluation: CategoryEvaluation,
                        holdout: HoldoutScores | None) -> dict[str, Threshold]:
    """The image and pixel thresholds of `setting` ({} for none)."""
    if setting.mode == "none":
        return {}
    if setting.mode == "fixed":
        return {level: Threshold(value, "fixed") for level, value in setting.values.items()}
    if setting.mode == "f1_test":
        chosen = {level: Threshold(_finite_or_none(evaluation.f1_thresholds.get(level)), "f1_test", optimistic=True,
                                   detail={"note": OPTIMISTIC_NOTE}) for level in LEVELS}
        if not evaluation.has_pixel_metrics:  # the pixel F1 needs ground-truth masks
            chosen["pixel"] = Threshold(None, "f1_test", optimistic=True,
                                        detail={"note": NO_PIXEL_F1_NOTE})
        return chosen
    if holdout is None:
        raise ConfigError(f"threshold=normal_quantile: no held-out normal images were scored; {HOLDOUT_HINT}")
    detail = {"q": setting.q, "n_images": len(holdout.scores)}
    pixels = np.concatenate([m.reshape(-1) for m in holdout.maps])
    return {"image": Threshold(float(np.quantile(holdout.scores, setting.q)), "normal_quantile", detail=detail),
            "pixel": Threshold(float(np.quantile(pixels, setting.q)), "normal_quantile", detail=dict(detail))}


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def thresholds_record(thresholds: Mapping[str, Threshold]) -> dict[str, Any]:
    """result.json's ``thresholds`` block."""
    return {level: t.as_record() for level, t in thresholds.items()}


def read_thresholds(record: Mapping[str, Any] | None) -> dict[str, Threshold]:
    """The thresholds a result.json records ({} if none)."""
    block = (record or {}).get("thresholds") or {}
    return {level: Threshold.from_record(block[level]) for level in LEVELS if isinstance(block.get(level), Mapping)}


def threshold_label(thresholds: Mapping[str, Threshold], level: str) -> str | None:
    """How a level's threshold was chosen, for a figure or a table: "normal_quantile q=0.99", "f1_test, optimistic"."""
    t = thresholds.get(level)
    if t is None:
        return None
    q = t.detail.get("q")
    return t.mode + (f" q={q:g}" if q is not None else "") + (", optimistic" if t.optimistic else "")


def pixel_threshold(thresholds: Mapping[str, Threshold]) -> float | None:
    """The pixel threshold's value, None when there is none."""
    pixel = thresholds.get("pixel")
    return None if pixel is None else pixel.value
