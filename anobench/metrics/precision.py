"""Average precision (AP) and F1-max, image- and pixel-level: the metrics later papers report beside AU-ROC.

Image level: scikit-learn on the per-image scores (`average_precision_score`, `precision_recall_curve`).

Pixel level: read off the ranking pixel AU-ROC and AU-PRO already computed (`PixelSplit.ranking`: the distinct
GT-positive scores t_0 < t_1 < ... < t_{k-1} with their counts c_j and the numbers of negatives below them),
so no second sort over the pixels. With P positives and N negatives, calling "score >= t_j" defective gives

    TP_j = c_j + c_{j+1} + ... + c_{k-1}     FP_j = N - (negatives < t_j)
    precision_j = TP_j / (TP_j + FP_j)       recall_j = TP_j / P

* AP = Σ_j (c_j / P) · precision_j. Recall only rises at a score some positive holds, by c_j / P there, so
  this is exactly scikit-learn's step-wise ``average_precision_score`` (Σ_n (R_n − R_{n−1}) P_n over every
  distinct score, negatives' included; ties are one step).
* F1-max = max_j 2·precision_j·recall_j / (precision_j + recall_j) = max_j 2·TP_j / (TP_j + FP_j + P). A
  threshold that only negatives hold has the TP of the next positive score above it and more FP, so the
  maximum over scikit-learn's ``precision_recall_curve`` is attained at some t_j: the two maxima are equal.
  The F1-optimal threshold is that t_j (the lowest one where the maximum is tied, as ``np.argmax`` over
  scikit-learn's ascending thresholds picks): an image or pixel with score >= threshold is called defective.

Edge cases: no positive or no negative (image or pixel) -> nan, with a RuntimeWarning (`warn_undefined`), as
for AU-ROC (scikit-learn would give AP = 1 without negatives and warn without positives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anobench.metrics._pixels import PixelSplit, check_pairs, common_score_dtype, split_pixels, warn_undefined
from anobench.metrics.auroc import check_image_inputs


@dataclass(frozen=True)
class PrecisionMetrics:
    """AP, F1-max and the threshold at the F1 maximum (score >= threshold is called defective); nan where undefined."""

    ap: float
    f1_max: float
    f1_threshold: float


UNDEFINED = PrecisionMetrics(float("nan"), float("nan"), float("nan"))


def image_precision_metrics(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> PrecisionMetrics:
    """Image AP and F1-max (with its threshold) of per-image scores (higher = more anomalous), by scikit-learn."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    s, y = check_image_inputs(scores, labels)
    classes = np.unique(y)
    if classes.size < 2:
        warn_undefined("image AP and F1-max", f"all {len(y)} images have label {int(classes[0])}")
        return UNDEFINED
    y = y.astype(int)
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0, precision 1) has no threshold
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    best = int(np.argmax(f1))
    return PrecisionMetrics(float(average_precision_score(y, s)), float(f1[best]), float(thresholds[best]))


def image_ap(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Average precision of per-image scores against labels (1 = defective); nan with one class only."""
    return image_precision_metrics(scores, labels).ap


def image_f1_max(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """(F1-max, threshold) of per-image scores: score >= threshold is called defective; nan with one class only."""
    m = image_precision_metrics(scores, labels)
    return m.f1_max, m.f1_threshold


def pixel_precision_from_split(split: PixelSplit) -> PrecisionMetrics:
    """Pixel AP, F1-max and its threshold from the split pixels' ranking (see the module docstring)."""
    n_neg, n_pos = split.n_neg, split.pos_scores.size
    if n_pos == 0:
        warn_undefined("pixel AP and F1-max", "no anomalous pixels in the masks")
        return UNDEFINED
    if n_neg == 0:
        warn_undefined("pixel AP and F1-max", "no normal pixels in the masks")
        return UNDEFINED
    r = split.ranking
    tp = np.cumsum(r.counts[::-1])[::-1]  # positives >= t_j (exact integers)
    called = np.subtract(n_neg, r.neg_below)  # pixels >= t_j: FP_j, then + TP_j
    called += tp
    precision = tp / called
    ap = float(np.dot(r.counts, precision)) / n_pos
    called += n_pos  # TP_j + FP_j + P: F1_j = 2 TP_j / that
    f1 = np.divide(tp, called, out=precision)
    best = int(np.argmax(f1))  # the lowest threshold at the maximum
    return PrecisionMetrics(ap, float(2.0 * f1[best]), float(r.thresholds[best]))


def pixel_precision_metrics(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> PrecisionMetrics:
    """Pixel AP, F1-max and its threshold over all pixels of all images (maps and masks of equal shapes)."""
    maps, masks = check_pairs(anomaly_maps, masks)
    split = split_pixels(maps.__getitem__, masks, common_score_dtype(maps), with_regions=False)
    return pixel_precision_from_split(split)


def pixel_ap(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Average precision over all pixels; equals sklearn's average_precision_score on the flattened arrays."""
    return pixel_precision_metrics(anomaly_maps, masks).ap


def pixel_f1_max(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[float, float]:
    """(F1-max, threshold) over all pixels; the maximum of F1 over sklearn's precision_recall_curve."""
    m = pixel_precision_metrics(anomaly_maps, masks)
    return m.f1_max, m.f1_threshold
