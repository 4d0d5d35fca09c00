"""AU-PRO exactly as MVTec AD's official evaluation script (2021) computes it.

Protocol (docs/methods.md, "MVTec AD evaluation protocol"):

* GT regions are the connected components of each mask (``scipy.ndimage.label`` with a 3x3 ones
  structure, i.e. 8-connectivity); any non-zero GT pixel is foreground.
* FPR = false-positive pixels / GT-negative pixels of ALL images (good images included).
* PRO = mean over ALL regions of ALL images of (region pixels >= threshold) / region area.
* One curve point per distinct score (ties merged: a run of equal scores is one step), clipped to
  <= 1, with (0, 0) prepended and (1, 1) appended.
* AU-PRO = ``trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit``.

``aupro`` integrates a reduced curve: between two thresholds that hold positive pixels only the
FPR changes, so the exact curve runs horizontally there and its intermediate points are collinear.
Keeping the two end points of each such run gives the same area and the same interpolated value at
the limit, while needing only a value sort of the negatives (no index array over 100 M pixels). The
area of that reduced curve up to the limit is summed segment by segment in closed form
(`_reduced_area`), with ``trapezoid``'s semantics at the limit, without materialising the curve.
``pro_curve`` returns the exact, unreduced curve (one point per distinct score) for inspection.

Edge cases (the official script would divide by zero): no GT region at all, or no GT-negative
pixel at all -> AU-PRO is nan, with a RuntimeWarning.

Precision: the official script stores FPRs as float32; we keep them in float64 (exact count / N),
so results can differ from it in about the 7th significant digit, never more.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from anobench.protocol import PRO_FPR_LIMIT
from anobench.metrics._pixels import (
    PixelSplit,
    check_fpr_limit,
    check_pairs,
    common_score_dtype,
    split_pixels,
    warn_undefined,
)


def aupro(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = PRO_FPR_LIMIT) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec's official AU-PRO).

    Maps and masks pair up by index and must have equal shapes (the protocol evaluates at the
    ground-truth resolution). Returns nan when the masks hold no region or no normal pixel.
    """
    limit = check_fpr_limit(fpr_limit)
    maps, masks = check_pairs(anomaly_maps, masks)
    split = split_pixels(maps.__getitem__, masks, common_score_dtype(maps), with_regions=True)
    return aupro_from_split(split, limit)


def aupro_from_split(split: PixelSplit, fpr_limit: float) -> float:
    """AU-PRO from already split pixels (lets evaluate_category share one split with pixel AU-ROC)."""
    limit = check_fpr_limit(fpr_limit)
    if not _pro_defined(split, "AU-PRO"):
        return float("nan")
    return _reduced_area(split, limit) / limit


def pro_curve(anomaly_maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, PRO) curve of MVTec's script: one point per distinct score, plus (0,0) and (1,1).

    Materialises several arrays as long as the number of pixels (argsort over all of them), so it is
    meant for inspection and small inputs; ``aupro`` does not use it. Where the curve is undefined
    (no region / no normal pixel) the affected coordinate is nan, with a RuntimeWarning.
    """
    maps, masks = check_pairs(anomaly_maps, masks)
    split = split_pixels(maps.__getitem__, masks, common_score_dtype(maps), with_regions=True)
    n_neg, n_regions = split.n_neg, split.n_regions
    _pro_defined(split, "the PRO curve")
    scores = np.concatenate([*split.neg_chunks, split.pos_scores])
    order = np.argsort(scores, kind="stable")[::-1]  # descending
    scores = scores[order]
    run_end = np.append(scores[1:] != scores[:-1], True)  # keep the last point of each tie run
    del scores
    fp_cum = np.cumsum(order < n_neg, dtype=np.int64)[run_end]  # negatives come first in `scores`
    pro_cum = np.cumsum(np.concatenate([np.zeros(n_neg), split.pos_weights])[order])[run_end]
    fprs = fp_cum / n_neg if n_neg else np.full(fp_cum.size, np.nan)
    pros = pro_cum / n_regions if n_regions else np.full(pro_cum.size, np.nan)
    return _close_curve(fprs, pros)


def trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Trapezoidal area under (x, y) up to ``x_max``, with MVTec's semantics (``generic_util.trapezoid``).

    x must be ascending (repeats allowed). Points with x <= x_max are integrated; if x_max is not
    itself a sample, a correction trapezoid runs from the last sample below it to x_max, with y
    interpolated linearly between that sample and the next. Non-finite points are dropped with a
    warning. Where MVTec asserts, we stay defined: x_max beyond the last sample integrates up to the
    last sample (no extrapolation); x_max below the first sample gives 0.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        warnings.warn("trapezoid: dropping non-finite x or y values", RuntimeWarning, stacklevel=2)
        x, y = x[finite], y[finite]
    correction = 0.0
    if x_max is not None:
        if not np.any(x == x_max):
            ins = int(np.searchsorted(x, x_max, side="right"))  # = bisect.bisect(x, x_max)
            if ins == 0:
                return 0.0
            if ins < len(x):
                x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
                y_interp = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
                correction = 0.5 * (y_interp + y0) * (x_max - x0)
        keep = x <= x_max
        x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def _pro_defined(split: PixelSplit, what: str) -> bool:
    """Warn and return False where MVTec's script would divide by zero."""
    if split.n_regions == 0:
        warn_undefined(what, "the masks contain no anomalous region")
        return False
    if split.n_neg == 0:
        warn_undefined(what, "the masks contain no normal pixel, so FPR has no denominator")
        return False
    return True


def _reduced_area(split: PixelSplit, limit: float) -> float:
    """``trapezoid(fprs, pros, x_max=limit)`` of the PRO curve reduced to the points around each distinct
    positive-pixel score, summed in closed form over the segments below the limit.

    For the distinct positive scores t_0 > t_1 > ... two points each are kept: A_j = (FPR, PRO) of all
    pixels with score > t_j and B_j = those with score >= t_j. A_j is the exact curve's point at the
    next higher distinct score (or (0, 0)), B_j its point at t_j; between B_j and A_{j+1} only negatives
    enter, so the exact curve is horizontal there. The curve is (0, 0), A_0, B_0, A_1, ..., B_{k-1},
    (1, PRO(B_{k-1})), (1, 1), FPRs and PROs clipped to <= 1, as MVTec's compute_pro returns it; with
    P_j = PRO(B_j) (P_-1 = 0), A_j = (a_j, P_{j-1}) and B_j = (b_j, P_j), so segment A_j B_j has area
    (P_{j-1} + P_j)(b_j - a_j) / 2 and segment B_j A_{j+1} area P_j (a_{j+1} - b_j).
    """
    a, b, pro = reduced_pro_points(split)
    k = pro.size
    m_a = int(np.searchsorted(a, limit, side="right"))  # points A_j with x <= limit (a prefix: x ascends)
    m_b = int(np.searchsorted(b, limit, side="right"))  # points B_j with x <= limit; m_b <= m_a <= m_b + 1
    left = pro[:m_b].copy()  # P_{j-1} + P_j for j < m_b
    if m_b > 1:
        left[1:] += pro[: m_b - 1]
    area = 0.5 * float(np.dot(left, b[:m_b] - a[:m_b]))
    if m_a > 1:
        area += float(np.dot(pro[: m_a - 1], a[1:m_a] - b[: m_a - 1]))
    # the last point with x <= limit, and the next one (for MVTec's interpolated correction trapezoid)
    if m_a > m_b:
        (x0, y0), (x1, y1) = (a[m_a - 1], pro[m_a - 2] if m_a > 1 else 0.0), (b[m_a - 1], pro[m_a - 1])
    else:
        x0, y0 = (b[m_b - 1], pro[m_b - 1]) if m_b else (0.0, 0.0)
        x1, y1 = (a[m_b], pro[m_b - 1] if m_b else 0.0) if m_b < k else (1.0, pro[k - 1])
    if limit >= 1.0:  # every point is kept: the closing horizontal run to (1, P_{k-1}), then (1, 1)
        return area + float(pro[k - 1] * (1.0 - b[k - 1]))
    if x0 < limit:
        y_interp = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y_interp + y0) * (limit - x0)
    return float(area)


def reduced_pro_points(split: PixelSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, P) of the reduced PRO curve (see `_reduced_area`), for the distinct positive scores t_0 > t_1 > ...:
    a_j = FPR of the pixels > t_j, b_j = FPR of the pixels >= t_j, P_j = PRO at t_j (clipped to <= 1).
    The exact curve is (0, 0), (a_0, 0), (b_0, P_0), (a_1, P_0), (b_1, P_1), ..., (1, P_{k-1}), (1, 1);
    AU-PRO integrates it and the figures draw it, so both show one PRO."""
    n_neg, r = split.n_neg, split.ranking  # ascending distinct positive scores; the curve runs downwards
    pro = np.cumsum(r.weight_sums[::-1])
    pro /= split.n_regions
    np.minimum(pro, 1.0, out=pro)
    a = np.subtract(n_neg, r.neg_below_or_equal[::-1], dtype=np.float64)  # false positives > t_j
    a /= n_neg
    b = np.subtract(n_neg, r.neg_below[::-1], dtype=np.float64)  # false positives >= t_j
    b /= n_neg
    return a, b, pro


def _close_curve(fprs: np.ndarray, pros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip to <= 1 (cumsum rounding) and add (0, 0) and (1, 1), as MVTec's compute_pro does."""
    np.minimum(fprs, 1.0, out=fprs)
    np.minimum(pros, 1.0, out=pros)
    return np.concatenate([[0.0], fprs, [1.0]]), np.concatenate([[0.0], pros, [1.0]])
