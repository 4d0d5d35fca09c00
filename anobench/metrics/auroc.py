"""Image-level and pixel-level AU-ROC.

Pixel AU-ROC is not part of MVTec's official script; papers compute it with
``sklearn.metrics.roc_auc_score`` over all flattened pixels of a category. We return the same value
(tie-aware) without sklearn's index arrays, so 100 M pixels fit in a few hundred MB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from anobench.metrics._pixels import (
    PixelSplit,
    check_pairs,
    common_score_dtype,
    split_pixels,
    warn_undefined,
)


def image_auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """AU-ROC of per-image scores (higher = more anomalous) against labels (1 = defective).

    Returns nan (with a RuntimeWarning saying why) when only one class is present, since the ROC
    is undefined then; a category evaluation should not crash on it.
    """
    s, y = check_image_inputs(scores, labels)
    classes = np.unique(y)
    if classes.size < 2:
        return warn_undefined("image AU-ROC", f"all {len(y)} images have label {int(classes[0])}")
    return float(roc_auc_score(y.astype(int), s))


def check_image_inputs(scores: Sequence[float] | np.ndarray,
                       labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image scores and labels as arrays, after checking they pair up, labels are 0/1 and scores finite."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if len(s) != len(y):
        raise ValueError(f"got {len(s)} scores but {len(y)} labels; one of each per image is needed")
    if len(s) == 0:
        raise ValueError("no images given (scores and labels are empty)")
    bad = np.setdiff1d(np.unique(y), [0, 1])
    if bad.size:
        raise ValueError(f"labels must be 0 (good) or 1 (defective), found {bad.tolist()}")
    if not np.isfinite(s.astype(np.float64)).all():
        raise ValueError("scores contain NaN or infinite values")
    return s, y


def pixel_auroc(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """AU-ROC over all pixels of all images; equals sklearn's roc_auc_score on the flattened arrays.

    Maps and masks pair up by index and must have equal shapes; any non-zero mask pixel is
    anomalous. Returns nan (with a warning) when all pixels are of one class.
    """
    maps, masks = check_pairs(anomaly_maps, masks)
    split = split_pixels(maps.__getitem__, masks, common_score_dtype(maps), with_regions=False)
    return auroc_from_split(split)


def auroc_from_split(split: PixelSplit) -> float:
    """Tie-aware AU-ROC (Mann-Whitney U) from the split pixels.

    AUC = P(pos > neg) + 0.5 P(pos == neg). For each distinct positive score t held by c positives,
    the negatives strictly below t (lo) and below or equal (hi) contribute c·(lo + hi) / 2, so
    AUC = Σ c·(lo + hi) / (2 P N), summed in exact integers.
    """
    n_neg, n_pos = split.n_neg, split.pos_scores.size
    if n_pos == 0:
        return warn_undefined("pixel AU-ROC", "no anomalous pixels in the masks")
    if n_neg == 0:
        return warn_undefined("pixel AU-ROC", "no normal pixels in the masks")
    r = split.ranking
    pairs = int(np.dot(r.counts, r.neg_below)) + int(np.dot(r.counts, r.neg_below_or_equal))
    return pairs / (2 * n_pos * n_neg)
