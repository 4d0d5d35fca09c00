"""Category evaluation: the one entry point the harness calls after a test run.

MVTec's protocol evaluates at the ground-truth resolution, so model-resolution maps are upsampled
(bilinear, align_corners=False) to each mask's size. Maps are upsampled one at a time and consumed
immediately, so the full-resolution category is never held as a stack of maps.

A dataset without pixel ground truth (``masks=None``, e.g. ``data=folder`` without masks) gets the image
metrics only; the pixel metrics are None (null in result.json) and the record says why (``pixel_metrics``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anobench.metrics._pixels import as_bool_mask, check_fpr_limit, check_memory, common_score_dtype, split_pixels
from anobench.metrics.auroc import auroc_from_split, image_auroc
from anobench.metrics.curves import MetricCurves, image_roc_curve, pixel_roc_curve, pro_curve_from_split
from anobench.metrics.pooling import pool_all
from anobench.metrics.precision import image_precision_metrics, pixel_precision_from_split
from anobench.metrics.pro import aupro_from_split
from anobench.protocol import EVALUATION_RESOLUTIONS as RESOLUTIONS
from anobench.protocol import PRO_FPR_LIMIT

PIXEL_METRIC_KEYS = ("pixel_auroc", "pro", "pixel_ap", "pixel_f1_max")
NO_MASKS_REASON = "the dataset has no ground-truth masks"


@dataclass
class CategoryEvaluation:
    """What `evaluate_category` measured; `as_record()` is what result.json's ``metrics`` / ``evaluation`` hold.

    ``curves`` come from the same pixel ranking as the metrics (drawn by anobench.visualize, not stored).
    ``f1_thresholds``: {"image": ..., "pixel": ...}, the anomaly-score thresholds at the image and pixel F1
    maxima (score >= threshold is called defective; nan where F1 is undefined; no "pixel" without masks).
    ``pixel_metrics_note``: why the pixel metrics are None (no masks); None when they were computed.
    """

    metrics: dict[str, float | None]
    resolution: str
    fpr_limit: float
    n_images: int
    n_defective: int
    n_regions: int | None  # None: no masks, so no regions were counted
    timings: dict[str, float]
    curves: MetricCurves | None = field(default=None, repr=False)
    f1_thresholds: dict[str, float] = field(default_factory=dict)
    pixel_metrics_note: str | None = None
    image_auroc_by_pooling: dict[str, float] = field(default_factory=dict)

    @property
    def has_pixel_metrics(self) -> bool:
        """False when the pixel metrics were not computed (no ground-truth masks)."""
        return self.pixel_metrics_note is None

    def as_record(self) -> dict[str, Any]:
        """The JSON-ready evaluation block (everything but the metrics and the curves)."""
        record = {"resolution": self.resolution, "fpr_limit": self.fpr_limit, "n_images": self.n_images,
                  "n_defective": self.n_defective, "n_regions": self.n_regions, "timings": dict(self.timings),
                  "f1_optimal_thresholds": dict(self.f1_thresholds),
                  "image_auroc_by_pooling": dict(self.image_auroc_by_pooling)}
        if self.pixel_metrics_note is not None:
            record["pixel_metrics"] = self.pixel_metrics_note
        return record


def upsample_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D map to ``size`` = (H, W) and return it as float32.

    Uses torch's ``interpolate(mode="bilinear", align_corners=False)``, the resize most methods
    apply themselves. The map is cast to float32 first. When the size already matches, the map is
    returned as float32 without resampling (no copy if it already is float32).
    """
    a = np.asarray(anomaly_map)
    if a.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {a.shape}")
    out_size = _check_size(size)
    if a.shape == out_size:
        return a.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    with torch.no_grad():
        out = F.interpolate(t, size=out_size, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def downsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a GT mask to ``size`` (torch ``interpolate(mode="nearest")``).

    The mask is made 0/1 float, resized, and thresholded at 0.5; torch's "nearest" picks source
    pixel floor(dst * in / out). Used only for resolution="model" (not MVTec's protocol).
    """
    m = as_bool_mask(mask)
    out_size = _check_size(size)
    if m.shape == out_size:
        return m
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    return (F.interpolate(t, size=out_size, mode="nearest")[0, 0] > 0.5).numpy()


def evaluate_category(
    anomaly_maps: Sequence[np.ndarray],
    image_scores: Sequence[float] | np.ndarray,
    masks: Sequence[np.ndarray] | None,
    labels: Sequence[int] | np.ndarray,
    resolution: str = "ground_truth",
    fpr_limit: float = PRO_FPR_LIMIT,
    with_curves: bool = True,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    no_masks_reason: str = NO_MASKS_REASON,
) -> CategoryEvaluation:
    """Image AU-ROC, pixel AU-ROC and AU-PRO of one category's test run, and image / pixel AP and F1-max.

    anomaly_maps: 2-D float maps at model resolution, one per test image.
    image_scores: one score per image (higher = more anomalous).
    masks:        2-D GT masks at their original resolution (all zero for good images), or None when the
                  dataset has none: then only the image metrics are computed (pixel AUROC, PRO, pixel AP and
                  F1-max are None, ``pixel_metrics_note`` says "not computed: <no_masks_reason>").
    labels:       1 = defective, 0 = good.
    image_sizes:  (H, W) of each test image; needed without masks at resolution "ground_truth", where
                  ``image_auroc_map_max`` takes each map's max after upsampling to its image's size (as it
                  does to its mask's size otherwise). Ignored when masks are given.
    resolution:   "ground_truth" (MVTec protocol: maps upsampled to each mask's size) or "model"
                  (masks downsampled to each map's size with nearest neighbour; cheaper, not official).

    ``n_regions`` counts GT regions at the resolution the metrics ran at; ``timings.upsample_s`` is
    the time spent resampling (maps or masks), ``metrics_s`` the rest. ``with_curves``: also read the ROC
    and PRO curves off the same pixel ranking (`anobench.metrics.curves`). Pixel AP and F1-max come from that
    ranking too (`anobench.metrics.precision`); ``f1_thresholds`` holds the thresholds at the F1 maxima.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(map(repr, RESOLUTIONS))}; got {resolution!r}")
    limit = check_fpr_limit(fpr_limit)
    if masks is None:
        return _evaluate_images_only(anomaly_maps, image_scores, labels, resolution, limit, with_curves,
                                     image_sizes, no_masks_reason)
    maps, masks = list(anomaly_maps), list(masks)
    scores, labels = np.asarray(image_scores), np.asarray(labels)
    n = len(maps)
    for name, length in (("image_scores", len(scores)), ("masks", len(masks)), ("labels", len(labels))):
        if length != n:
            raise ValueError(f"{name} has {length} entries but anomaly_maps has {n}; one per test image is needed")
    for i, (a, m) in enumerate(zip(maps, masks)):
        if np.ndim(a) != 2:
            raise ValueError(f"anomaly_maps[{i}] must be 2-D, got shape {np.shape(a)}")
        if np.ndim(m) != 2:
            raise ValueError(f"masks[{i}] must be 2-D, got shape {np.shape(m)}")

    start = time.perf_counter()
    img_auroc = image_auroc(scores, labels)  # validates labels before the heavy pixel work
    img_precision = image_precision_metrics(scores, labels)
    _warn_label_mask_mismatch(labels, masks)

    by_pooling = image_auroc_by_pooling(maps, labels)
    resample_s = 0.0
    # each map's max at the evaluation resolution: what MVTec's script scores as its classification AUROC
    map_max = np.array([float(np.max(a)) for a in maps])
    if resolution == "ground_truth":

        def get_map(i: int) -> np.ndarray:
            nonlocal resample_s
            t0 = time.perf_counter()
            out = upsample_map(maps[i], np.shape(masks[i]))
            resample_s += time.perf_counter() - t0
            map_max[i] = float(np.max(out))
            return out

        eval_masks, dtype = masks, np.dtype(np.float32)
    else:
        t0 = time.perf_counter()
        eval_masks = [downsample_mask(m, np.shape(a)) for a, m in zip(maps, masks)]
        resample_s = time.perf_counter() - t0
        get_map, dtype = maps.__getitem__, common_score_dtype(maps)

    check_memory(eval_masks, dtype)  # one clear error before allocating, not an OOM kill halfway
    split = split_pixels(get_map, eval_masks, dtype, with_regions=True)
    pix_precision = pixel_precision_from_split(split)
    metrics = {
        "image_auroc": img_auroc,
        "pixel_auroc": auroc_from_split(split),
        "pro": aupro_from_split(split, limit),
        "image_ap": img_precision.ap,
        "pixel_ap": pix_precision.ap,
        "image_f1_max": img_precision.f1_max,
        "pixel_f1_max": pix_precision.f1_max,
        # The same image AUROC for every method, from the map alone (max over its pixels at the evaluation
        # resolution, as MVTec's script scores maps), beside the paper's own image score above: separates
        # "better maps" from "a better score formula".
        "image_auroc_map_max": image_auroc(map_max, labels),
    }
    curves = MetricCurves(image_roc_curve(scores, labels), pixel_roc_curve(split),
                          pro_curve_from_split(split)) if with_curves else None
    total_s = time.perf_counter() - start
    return CategoryEvaluation(
        metrics=metrics,
        resolution=resolution,
        fpr_limit=limit,
        n_images=n,
        n_defective=int(np.count_nonzero(labels == 1)),
        n_regions=split.n_regions,
        timings={"upsample_s": resample_s, "metrics_s": total_s - resample_s},
        curves=curves,
        f1_thresholds={"image": img_precision.f1_threshold, "pixel": pix_precision.f1_threshold},
        image_auroc_by_pooling=by_pooling,
    )


def _evaluate_images_only(anomaly_maps: Sequence[np.ndarray], image_scores: Sequence[float] | np.ndarray,
                          labels: Sequence[int] | np.ndarray, resolution: str, limit: float, with_curves: bool,
                          image_sizes: Sequence[tuple[int, int]] | None, reason: str) -> CategoryEvaluation:
    """`evaluate_category` without masks: the image metrics, the pixel metrics None with the reason."""
    maps = list(anomaly_maps)
    scores, labels = np.asarray(image_scores), np.asarray(labels)
    n = len(maps)
    lengths = [("image_scores", len(scores)), ("labels", len(labels))]
    if resolution == "ground_truth":
        if image_sizes is None:
            raise ValueError("without masks, resolution='ground_truth' needs image_sizes (each test image's (H, W)) "
                             "to take each map's max at the image's size; or use resolution='model'")
        image_sizes = [_check_size(s) for s in image_sizes]
        lengths.append(("image_sizes", len(image_sizes)))
    for name, length in lengths:
        if length != n:
            raise ValueError(f"{name} has {length} entries but anomaly_maps has {n}; one per test image is needed")
    for i, a in enumerate(maps):
        if np.ndim(a) != 2:
            raise ValueError(f"anomaly_maps[{i}] must be 2-D, got shape {np.shape(a)}")

    start = time.perf_counter()
    img_auroc = image_auroc(scores, labels)
    img_precision = image_precision_metrics(scores, labels)
    by_pooling = image_auroc_by_pooling(maps, labels)
    resample_s = 0.0
    if resolution == "ground_truth":  # the max at the evaluation resolution, as with masks
        t0 = time.perf_counter()
        map_max = np.array([float(np.max(upsample_map(a, size))) for a, size in zip(maps, image_sizes)])
        resample_s = time.perf_counter() - t0
    else:
        map_max = np.array([float(np.max(a)) for a in maps])
    metrics: dict[str, float | None] = {
        "image_auroc": img_auroc,
        "pixel_auroc": None,
        "pro": None,
        "image_ap": img_precision.ap,
        "pixel_ap": None,
        "image_f1_max": img_precision.f1_max,
        "pixel_f1_max": None,
        "image_auroc_map_max": image_auroc(map_max, labels),
    }
    curves = MetricCurves(image_roc_curve(scores, labels), None, None) if with_curves else None
    total_s = time.perf_counter() - start
    return CategoryEvaluation(
        metrics=metrics,
        resolution=resolution,
        fpr_limit=limit,
        n_images=n,
        n_defective=int(np.count_nonzero(labels == 1)),
        n_regions=None,
        timings={"upsample_s": resample_s, "metrics_s": total_s - resample_s},
        curves=curves,
        f1_thresholds={"image": img_precision.f1_threshold},
        pixel_metrics_note=f"not computed: {reason}",
        image_auroc_by_pooling=by_pooling,
    )


def image_auroc_by_pooling(maps: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Image AUROC of every candidate pooling of the maps (`anobench.metrics.pooling`), on the maps as the
    method returned them (model resolution, where the method's own pooled score is taken too)."""
    return {rule: image_auroc(scores, labels) for rule, scores in pool_all(list(maps)).items()}


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def _warn_label_mask_mismatch(labels: np.ndarray, masks: Sequence[np.ndarray]) -> None:
    """A label that disagrees with its mask usually means maps, masks and labels are out of order."""
    bad = [i for i, (y, m) in enumerate(zip(labels, masks)) if bool(y == 1) != bool(np.any(m))]
    if bad:
        warnings.warn(
            f"{len(bad)} image(s) have a label that disagrees with the mask (label 1 needs a non-empty "
            f"mask, label 0 an empty one), first indices {bad[:5]}; check that inputs are in the same order",
            RuntimeWarning,
            stacklevel=2,
        )
