"""Map pooling candidates equal independent numpy / scipy computations, are scale-free, and every evaluation
records the image AUROC of each of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anobench.metrics import evaluate_category
from anobench.metrics.pooling import MAP_POOLING, POOLINGS, pool_all, pool_maps


def _maps(n: int = 5, side: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, side, side)).astype(np.float32)


def test_each_pooling_equals_an_independent_computation():
    maps = _maps()
    t = torch.from_numpy(maps)
    np.testing.assert_allclose(pool_maps(t, "max").numpy(), maps.reshape(5, -1).max(axis=1))
    for rule, fraction in (("top1_mean", 0.01), ("top5_mean", 0.05)):
        k = round(fraction * 64 * 64)
        expected = np.sort(maps.reshape(5, -1), axis=1)[:, -k:].mean(axis=1)
        np.testing.assert_allclose(pool_maps(t, rule).numpy(), expected, rtol=1e-5)
    # σ = 64 / 64 = 1 px; torch's reflect padding is scipy's "mirror"; radius ⌈3σ⌉ = scipy's truncate 3
    smoothed = np.stack([ndimage.gaussian_filter(m.astype(np.float64), 1.0, mode="mirror", truncate=3.0) for m in maps])
    np.testing.assert_allclose(pool_maps(t, "smoothed_max").numpy(), smoothed.reshape(5, -1).max(axis=1), rtol=1e-5)


def test_poolings_are_scale_free():
    """The same map at twice the size (each value repeated 2×2) pools to the same score."""
    maps = torch.from_numpy(_maps(side=100))
    doubled = maps.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    for rule in ("max", "top1_mean", "top5_mean"):
        torch.testing.assert_close(pool_maps(doubled, rule), pool_maps(maps, rule), rtol=1e-5, atol=1e-6)
    # a smooth blob: the blur scales with the side, so its smoothed peak is the same at both sizes
    yy, xx = torch.meshgrid(torch.arange(100.0), torch.arange(100.0), indexing="ij")
    blob = torch.exp(-((yy - 40) ** 2 + (xx - 60) ** 2) / (2 * 6.0**2))[None]
    blob2 = torch.nn.functional.interpolate(blob[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    assert float(pool_maps(blob2, "smoothed_max")) == pytest.approx(float(pool_maps(blob, "smoothed_max")), rel=0.02)


def test_smoothed_max_ignores_one_hot_pixel_but_not_a_blob():
    base = torch.zeros(2, 64, 64)
    base[0, 10, 10] = 1.0  # one spurious pixel
    base[1, 30:38, 30:38] = 0.5  # a defect-sized blob, half as hot
    assert pool_maps(base, "max")[0] > pool_maps(base, "max")[1]
    assert pool_maps(base, "smoothed_max")[0] < pool_maps(base, "smoothed_max")[1]


def test_bad_rule_and_shape_are_named():
    with pytest.raises(ValueError, match="median.*max, smoothed_max"):
        pool_maps(torch.zeros(1, 4, 4), "median")
    with pytest.raises(ValueError, match="B×H×W"):
        pool_maps(torch.zeros(4, 4), "max")
    assert MAP_POOLING in POOLINGS


def test_evaluation_records_the_auroc_of_every_pooling():
    rng = np.random.default_rng(1)
    labels = np.array([0, 0, 0, 1, 1, 1])
    maps = [rng.random((32, 32)).astype(np.float32) + 0.3 * label * (rng.random((32, 32)) > 0.97) for label in labels]
    masks = [np.zeros((48, 48), bool) if label == 0 else np.pad(np.ones((4, 4), bool), 22) for label in labels]
    evaluation = evaluate_category(maps, rng.random(6), masks, labels)
    recorded = evaluation.as_record()["image_auroc_by_pooling"]
    assert sorted(recorded) == sorted(POOLINGS)
    pooled = pool_all(maps)
    for rule in POOLINGS:
        assert recorded[rule] == pytest.approx(roc_auc_score(labels, pooled[rule]))
    no_masks = evaluate_category(maps, rng.random(6), None, labels, resolution="model")
    assert no_masks.image_auroc_by_pooling == pytest.approx(recorded)
