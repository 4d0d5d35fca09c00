"""Image and pixel average precision and F1-max: equal to scikit-learn's (pixel ones from the shared ranking)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve

from anobench.metrics import (
    evaluate_category,
    image_ap,
    image_f1_max,
    image_precision_metrics,
    pixel_ap,
    pixel_f1_max,
    pixel_precision_metrics,
    upsample_map,
)
from anobench.metrics._pixels import split_pixels
from anobench.metrics.precision import pixel_precision_from_split


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Max F1 over scikit-learn's precision-recall curve, and the threshold where np.argmax finds it."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def random_category(rng, n_images, shape, decimals, dtype=np.float32, defect_share=0.5):
    """Maps with many ties (scores rounded to `decimals`), masks with rectangles, brighter maps over them."""
    maps, masks = [], []
    h, w = shape
    for i in range(n_images):
        mask = np.zeros(shape, bool)
        if rng.random() < defect_share or i == 0:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
                mask[y : y + rng.integers(2, h // 3 + 3), x : x + rng.integers(2, w // 3 + 3)] = True
        a = rng.random(shape) + 0.4 * mask * rng.random(shape)
        maps.append(np.round(a, decimals).astype(dtype))
        masks.append(mask)
    return maps, masks


def flat(maps, masks):
    return np.concatenate([m.ravel() for m in masks]).astype(int), np.concatenate([a.ravel() for a in maps])


def test_sklearn_docstring_example():
    # average_precision_score's documented example: AP = 0.8333...
    maps, masks = [np.array([[0.1, 0.4, 0.35, 0.8]])], [np.array([[0, 0, 1, 1]])]
    assert pixel_ap(maps, masks) == pytest.approx(0.8333333333333333, abs=1e-15)
    # F1 at >= 0.35: TP 2, FP 1 -> 0.8; at >= 0.8: TP 1, FP 0 -> 2/3
    assert pixel_f1_max(maps, masks) == (pytest.approx(0.8, abs=1e-15), pytest.approx(0.35))
    assert image_ap([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.8333333333333333, abs=1e-15)


@pytest.mark.parametrize(
    ("n_images", "shape", "decimals", "dtype"),
    [
        (4, (6, 7), 1, np.float32),  # heavy ties, tiny
        (12, (40, 50), 2, np.float64),  # float64 scores keep their precision
        (10, (250, 400), 3, np.float32),  # 1e6 pixels, ties
        (10, (200, 500), 7, np.float32),  # 1e6 pixels, nearly all distinct
    ],
)
def test_pixel_ap_and_f1_max_equal_sklearn(n_images, shape, decimals, dtype):
    rng = np.random.default_rng(n_images * 1000 + decimals)
    maps, masks = random_category(rng, n_images, shape, decimals, dtype)
    labels, scores = flat(maps, masks)
    result = pixel_precision_metrics(maps, masks)
    assert result.ap == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    f1, threshold = sklearn_f1_max(labels, scores)
    assert result.f1_max == pytest.approx(f1, abs=1e-9)
    assert result.f1_threshold == threshold
    # the threshold means "score >= threshold is called defective"
    assert f1_score(labels, scores >= result.f1_threshold) == pytest.approx(result.f1_max, abs=1e-12)
    assert pixel_ap(maps, masks) == result.ap and pixel_f1_max(maps, masks) == (result.f1_max, result.f1_threshold)


def test_pixel_metrics_share_the_split_ranking():
    rng = np.random.default_rng(3)
    maps, masks = random_category(rng, 6, (30, 30), 2)
    split = split_pixels(maps.__getitem__, masks, np.dtype(np.float32), with_regions=True)
    ranking = split.ranking
    result = pixel_precision_from_split(split)
    assert split.ranking is ranking  # read off the cached ranking, no second sort
    assert result == pixel_precision_metrics(maps, masks)


@pytest.mark.parametrize("decimals", [1, 3])
def test_image_ap_and_f1_max_equal_sklearn(decimals):
    rng = np.random.default_rng(decimals)
    labels = rng.integers(0, 2, size=200)
    scores = np.round(rng.random(200) + 0.3 * labels, decimals)
    result = image_precision_metrics(scores, labels)
    assert result.ap == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    f1, threshold = sklearn_f1_max(labels, scores)
    assert result.f1_max == pytest.approx(f1, abs=1e-12) and result.f1_threshold == threshold
    assert f1_score(labels, scores >= result.f1_threshold) == pytest.approx(result.f1_max, abs=1e-12)
    assert image_ap(scores, labels) == result.ap and image_f1_max(scores, labels) == (f1, threshold)


def test_evaluate_category_ground_truth_resolution():
    rng = np.random.default_rng(5)
    masks = [np.zeros((48, 40), bool), np.zeros((40, 40), bool), np.zeros((48, 40), bool), np.zeros((40, 40), bool)]
    masks[1][5:20, 8:30] = True
    masks[2][30:40, 2:9] = True
    masks[2][2:4, 30:33] = True
    labels = np.array([0, 1, 1, 0])
    maps = [np.round(rng.random((16, 16)), 2) for _ in masks]
    maps[1][2:7, 3:10] += 0.6
    scores = np.array([m.max() for m in maps]) + np.array([0.0, 0.2, -0.3, 0.1])
    result = evaluate_category(maps, scores, masks, labels)
    up = [upsample_map(a, m.shape) for a, m in zip(maps, masks)]
    flat_labels, flat_scores = flat(up, masks)
    assert result.metrics["pixel_ap"] == pytest.approx(average_precision_score(flat_labels, flat_scores), abs=1e-9)
    f1, threshold = sklearn_f1_max(flat_labels, flat_scores)
    assert result.metrics["pixel_f1_max"] == pytest.approx(f1, abs=1e-9)
    assert result.f1_thresholds["pixel"] == threshold
    assert result.metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    f1, threshold = sklearn_f1_max(labels, scores)
    assert result.metrics["image_f1_max"] == pytest.approx(f1, abs=1e-12)
    assert result.f1_thresholds["image"] == threshold
    assert {"image_auroc", "pixel_auroc", "pro", "image_auroc_map_max"} <= set(result.metrics)
    record = result.as_record()
    assert record["f1_optimal_thresholds"] == result.f1_thresholds
    assert set(record["f1_optimal_thresholds"]) == {"image", "pixel"}
    json.dumps(record)  # JSON-ready


def test_evaluate_category_model_resolution():
    rng = np.random.default_rng(6)
    masks = [np.zeros((32, 32), bool) for _ in range(3)]
    masks[0][4:13, 5:21] = True
    masks[2][20:30, 1:6] = True
    maps = [np.round(rng.random((8, 8)), 1) for _ in masks]
    labels = np.array([1, 0, 1])
    result = evaluate_category(maps, [m.max() for m in maps], masks, labels, resolution="model")
    small = [m[::4, ::4] for m in masks]  # torch "nearest" 32 -> 8 takes every 4th pixel
    flat_labels, flat_scores = flat(maps, small)
    assert result.metrics["pixel_ap"] == pytest.approx(average_precision_score(flat_labels, flat_scores), abs=1e-12)
    f1, threshold = sklearn_f1_max(flat_labels, flat_scores)
    assert result.metrics["pixel_f1_max"] == pytest.approx(f1, abs=1e-12)
    assert result.f1_thresholds["pixel"] == threshold


def test_undefined_cases_are_nan_with_a_warning():
    maps = [np.random.rand(4, 4), np.random.rand(4, 4)]
    with pytest.warns(RuntimeWarning, match="no anomalous pixels"):
        result = pixel_precision_metrics(maps, [np.zeros((4, 4)), np.zeros((4, 4))])
    assert np.isnan(result.ap) and np.isnan(result.f1_max) and np.isnan(result.f1_threshold)
    with pytest.warns(RuntimeWarning, match="no normal pixels"):
        result = pixel_precision_metrics(maps, [np.ones((4, 4)), np.ones((4, 4))])
    assert np.isnan(result.ap) and np.isnan(result.f1_max) and np.isnan(result.f1_threshold)
    with pytest.warns(RuntimeWarning, match="all 3 images have label 0"):
        result = image_precision_metrics([0.1, 0.2, 0.3], [0, 0, 0])
    assert np.isnan(result.ap) and np.isnan(result.f1_max) and np.isnan(result.f1_threshold)
    with pytest.warns(RuntimeWarning, match="all 2 images have label 1"):
        assert np.isnan(image_ap([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="labels must be 0"):
        image_ap([0.1, 0.2], [0, 2])


def test_evaluate_category_all_good_images_gives_nan_thresholds():
    maps = [np.random.rand(8, 8) for _ in range(3)]
    masks = [np.zeros((16, 16), bool) for _ in range(3)]
    with pytest.warns(RuntimeWarning):
        result = evaluate_category(maps, [0.1, 0.2, 0.3], masks, [0, 0, 0])
    for key in ("image_ap", "pixel_ap", "image_f1_max", "pixel_f1_max"):
        assert np.isnan(result.metrics[key])
    assert all(np.isnan(v) for v in result.f1_thresholds.values())
