"""Metrics for MVTec AD: image AU-ROC, pixel AU-ROC and AU-PRO (MVTec's official protocol).

Pure numpy/scipy/torch; no Lightning, no config. ``evaluate_category`` is what the harness calls
after a test run; the other functions take plain arrays.
"""

from anobench.metrics.auroc import image_auroc, pixel_auroc
from anobench.metrics.evaluate import CategoryEvaluation, evaluate_category, upsample_map
from anobench.metrics.pro import aupro, pro_curve, trapezoid

__all__ = [
    "CategoryEvaluation",
    "aupro",
    "evaluate_category",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "trapezoid",
    "upsample_map",
]
