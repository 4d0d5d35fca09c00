"""Metrics for MVTec AD: image AU-ROC, pixel AU-ROC and AU-PRO (MVTec's official protocol), and image / pixel
average precision and F1-max (what later papers report).

Pure numpy/scipy/torch; no Lightning, no config. ``evaluate_category`` is what the harness calls
after a test run; the other functions take plain arrays.
"""

from anobench.metrics.auroc import image_auroc, pixel_auroc
from anobench.metrics.evaluate import CategoryEvaluation, evaluate_category, upsample_map
from anobench.metrics.precision import (
    PrecisionMetrics,
    image_ap,
    image_f1_max,
    image_precision_metrics,
    pixel_ap,
    pixel_f1_max,
    pixel_precision_metrics,
)
from anobench.metrics.pro import aupro, pro_curve, trapezoid

__all__ = [
    "CategoryEvaluation",
    "PrecisionMetrics",
    "aupro",
    "evaluate_category",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "image_precision_metrics",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_precision_metrics",
    "pro_curve",
    "trapezoid",
    "upsample_map",
]
