"""The curves figures draw are the metrics' own: the areas under them are result.json's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from anobench.metrics import evaluate_category, pro_curve, trapezoid
from anobench.metrics.curves import thin


def _category(seed: int = 0, n: int = 6, size: int = 24):
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros((size, size), dtype=bool)
        if i % 2:
            y, x = rng.integers(2, size - 8, 2)
            mask[y:y + 5, x:x + 6] = True
            mask[1, 1] = True  # a second, one-pixel region
        score = rng.normal(size=(size, size)).astype(np.float32)
        score[mask] += 1.5
        maps.append(np.round(score, 1))  # ties between positives and negatives
        masks.append(mask)
    labels = np.array([int(m.any()) for m in masks])
    return maps, masks, labels


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_the_pro_curve_integrates_to_the_reported_pro(limit):
    maps, masks, labels = _category()
    result = evaluate_category(maps, [m.max() for m in maps], masks, labels, fpr_limit=limit)
    curve = result.curves.pro
    assert curve.n_exact == len(curve.x)  # small input: nothing thinned
    assert trapezoid(curve.x, curve.y, x_max=limit) / limit == pytest.approx(result.metrics["pro"], abs=1e-12)


def test_the_pro_curve_runs_through_points_of_mvtecs_exact_curve():
    maps, masks, labels = _category(seed=1)
    curve = evaluate_category(maps, [m.max() for m in maps], masks, labels).curves.pro
    exact_x, exact_y = pro_curve(maps, masks)
    exact = set(zip(np.round(exact_x, 12), np.round(exact_y, 12)))
    ours = list(zip(np.round(curve.x[:-2], 12), np.round(curve.y[:-2], 12)))  # the closing points are the script's too
    assert all(point in exact for point in ours)
    assert (curve.x[-1], curve.y[-1]) == (1.0, 1.0)


def test_the_pixel_roc_integrates_to_the_pixel_auroc_and_is_sklearns_curve():
    maps, masks, labels = _category(seed=2)
    result = evaluate_category(maps, [m.max() for m in maps], masks, labels)
    curve = result.curves.pixel_roc
    area = float(np.sum(0.5 * (curve.y[1:] + curve.y[:-1]) * np.diff(curve.x)))
    assert area == pytest.approx(result.metrics["pixel_auroc"], abs=1e-12)
    fpr, tpr, _ = roc_curve(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))
    for x, y in zip(fpr, tpr):  # every point of sklearn's curve lies on ours (vertical segments included)
        at_x = curve.y[curve.x == x]
        if at_x.size:
            assert at_x.min() - 1e-12 <= y <= at_x.max() + 1e-12, (x, y)
        else:
            assert np.interp(x, curve.x, curve.y) == pytest.approx(y, abs=1e-12), (x, y)


def test_the_image_roc_is_sklearns_and_is_absent_with_one_class():
    maps, masks, labels = _category(seed=3)
    scores = [float(m.max()) for m in maps]
    curve = evaluate_category(maps, scores, masks, labels).curves.image_roc
    fpr, tpr, _ = roc_curve(labels, scores)
    np.testing.assert_array_equal(curve.x, fpr)
    np.testing.assert_array_equal(curve.y, tpr)
    good = [np.zeros_like(m) for m in masks]
    with pytest.warns(RuntimeWarning):
        curves = evaluate_category(maps, scores, good, np.zeros(len(maps), dtype=int)).curves
    assert curves.image_roc is None and curves.pro is None and curves.pixel_roc is None


def test_thinning_keeps_only_the_curves_own_points_and_both_ends():
    x = np.sort(np.random.default_rng(0).random(50_000))
    y = np.sqrt(x)
    curve = thin(x, y, max_points=500)
    assert len(curve.x) <= 502 and curve.n_exact == 50_000
    assert (curve.x[0], curve.x[-1]) == (x[0], x[-1])
    np.testing.assert_array_equal(curve.y, np.sqrt(curve.x))
    assert np.all(np.diff(curve.x) >= 0)
