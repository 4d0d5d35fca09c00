"""The curves behind the metrics, from the metrics' own computation (one ROC, one PRO definition).

`evaluate_category` splits and ranks a category's pixels once for pixel AU-ROC and AU-PRO; the curves here
are read off that same ranking, so a figure can never show another PRO than result.json. The exact curves
have two points per distinct GT-positive score (millions at full resolution); for drawing they are thinned
to at most ``max_points`` of their own points (no interpolated point is invented).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anobench.metrics._pixels import PixelSplit
from anobench.metrics.pro import reduced_pro_points


@dataclass(frozen=True)
class Curve:
    """x ascending (false-positive rate), y the rate it is drawn against; ``n_exact`` = points before thinning."""

    x: np.ndarray
    y: np.ndarray
    n_exact: int


@dataclass(frozen=True)
class MetricCurves:
    """Image ROC, pixel ROC and PRO of one evaluation (None where the metric is undefined)."""

    image_roc: Curve | None
    pixel_roc: Curve | None
    pro: Curve | None


MAX_POINTS = 4096


def thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> Curve:
    """At most ``max_points`` of the curve's own points, evenly along the curve and along x (the low-FPR
    end, where PRO is integrated, keeps its detail); first and last points always kept."""
    n = x.size
    if n <= max_points:
        return Curve(x, y, n)
    half = max_points // 2
    by_index = np.linspace(0, n - 1, half).round().astype(np.intp)
    by_x = np.clip(np.searchsorted(x, np.linspace(x[0], x[-1], half), side="left"), 0, n - 1)
    keep = np.unique(np.concatenate([by_index, by_x, [0, n - 1]]))
    return Curve(x[keep], y[keep], n)


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(2 * a.size, dtype=np.float64)
    out[0::2], out[1::2] = a, b
    return out


def pixel_roc_curve(split: PixelSplit, max_points: int = MAX_POINTS) -> Curve | None:
    """Pixel ROC through the points just above and at each distinct positive score (the exact step curve:
    between two positive scores only negatives enter, so it is horizontal there)."""
    n_neg, n_pos = split.n_neg, split.pos_scores.size
    if n_neg == 0 or n_pos == 0:
        return None
    r = split.ranking
    tp_at = np.cumsum(r.counts[::-1]) / n_pos  # positives >= t_j, t_j descending
    tp_above = np.concatenate([[0.0], tp_at[:-1]])
    fp_above = (n_neg - r.neg_below_or_equal[::-1]) / n_neg
    fp_at = (n_neg - r.neg_below[::-1]) / n_neg
    x = np.concatenate([[0.0], _interleave(fp_above, fp_at), [1.0]])
    y = np.concatenate([[0.0], _interleave(tp_above, tp_at), [1.0]])
    return thin(x, y, max_points)


def pro_curve_from_split(split: PixelSplit, max_points: int = MAX_POINTS) -> Curve | None:
    """The PRO curve AU-PRO integrates (`anobench.metrics.pro.reduced_pro_points`), closed as MVTec's script."""
    if split.n_regions == 0 or split.n_neg == 0:
        return None
    a, b, pro = reduced_pro_points(split)
    before = np.concatenate([[0.0], pro[:-1]])
    x = np.concatenate([[0.0], _interleave(a, b), [1.0, 1.0]])
    y = np.concatenate([[0.0], _interleave(before, pro), [pro[-1], 1.0]])
    return thin(x, y, max_points)


def image_roc_curve(scores: np.ndarray, labels: np.ndarray) -> Curve | None:
    """scikit-learn's ROC of the image scores (what image AU-ROC integrates); None with one class only."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        return None
    fpr, tpr, _ = roc_curve(labels.astype(int), np.asarray(scores, dtype=np.float64))
    return Curve(fpr, tpr, fpr.size)
