"""Decision thresholds from an evaluation (no training): f1_test without ground-truth masks."""

from __future__ import annotations

import numpy as np

from anobench.metrics import evaluate_category
from anobench.tasks.thresholds import NO_PIXEL_F1_NOTE, ThresholdSetting, decision_thresholds, thresholds_record


def _category(rng):
    labels = np.array([0, 0, 1, 1, 0, 1])
    maps = [rng.random((8, 8)) + label for label in labels]
    masks = [np.pad(np.ones((4, 4), bool), 6) if label else np.zeros((16, 16), bool) for label in labels]
    return maps, np.array([m.max() for m in maps]), masks, labels


def test_f1_test_without_masks_keeps_the_image_threshold_and_skips_the_pixel_one_with_the_reason():
    maps, scores, masks, labels = _category(np.random.default_rng(0))
    with_masks = decision_thresholds(ThresholdSetting("f1_test"), evaluate_category(maps, scores, masks, labels), None)
    evaluation = evaluate_category(maps, scores, None, labels, image_sizes=[m.shape for m in masks])
    chosen = decision_thresholds(ThresholdSetting("f1_test"), evaluation, None)
    assert chosen["image"].value == with_masks["image"].value is not None
    assert with_masks["pixel"].value is not None and chosen["pixel"].value is None
    record = thresholds_record(chosen)
    assert record["pixel"] == {"value": None, "mode": "f1_test", "optimistic": True, "note": NO_PIXEL_F1_NOTE}
    # thresholds that need no masks are unchanged
    fixed = decision_thresholds(ThresholdSetting("fixed", {"image": 0.5, "pixel": 0.3}), evaluation, None)
    assert (fixed["image"].value, fixed["pixel"].value) == (0.5, 0.3)
