"""Image and pixel AU-ROC: agreement with sklearn, tie handling, undefined cases, validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anobench.metrics import image_auroc, pixel_auroc


def test_image_auroc_basics():
    assert image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert image_auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert image_auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # ties count one half
    # pairs (pos, neg): (.7,.1) (.7,.7 tie) (.3,.1) (.3,.7 lost) -> (1 + .5 + 1 + 0) / 4
    assert image_auroc([0.1, 0.7, 0.7, 0.3], [0, 0, 1, 1]) == 0.625
    assert image_auroc(np.array([1, 2, 3]), np.array([True, False, True])) == 0.5


def test_image_auroc_one_class_is_nan_with_reason():
    with pytest.warns(RuntimeWarning, match="all 3 images have label 0"):
        assert np.isnan(image_auroc([0.1, 0.2, 0.3], [0, 0, 0]))


def test_image_auroc_validation():
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match=r"labels must be 0 \(good\) or 1 \(defective\), found \[2\]"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="must be 1-D"):
        image_auroc([[0.1, 0.2]], [[0, 1]])
    with pytest.raises(ValueError, match="no images"):
        image_auroc([], [])


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(6):
        h, w = rng.integers(5, 30, size=2)
        mask = np.zeros((h, w), bool) if i == 0 else rng.random((h, w)) < 0.1 * (1 + seed)
        maps.append(np.round(rng.random((h, w)) + 0.3 * mask, 1))  # few distinct values: many ties
        masks.append(mask)
    expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_float32_and_uint8_masks():
    rng = np.random.default_rng(3)
    maps = [rng.random((16, 16)).astype(np.float32) for _ in range(3)]
    masks = [(rng.random((16, 16)) < 0.2).astype(np.uint8) * 255 for _ in range(3)]
    expected = roc_auc_score(np.concatenate([m.ravel() > 0 for m in masks]), np.concatenate([a.ravel() for a in maps]))
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_keeps_float64_precision():
    # 1 + 1e-12 and 1 are distinct in float64 but equal in float32: a float32 cast would give .5
    maps = [np.array([[1.0, 1.0 + 1e-12]])]
    masks = [np.array([[False, True]])]
    assert pixel_auroc(maps, masks) == 1.0


def test_pixel_auroc_one_class_is_nan_with_reason():
    with pytest.warns(RuntimeWarning, match="no anomalous pixels"):
        assert np.isnan(pixel_auroc([np.random.rand(3, 3)], [np.zeros((3, 3), bool)]))
    with pytest.warns(RuntimeWarning, match="no normal pixels"):
        assert np.isnan(pixel_auroc([np.random.rand(3, 3)], [np.ones((3, 3), bool)]))


def test_pixel_auroc_shape_mismatch_names_index():
    with pytest.raises(ValueError, match=r"anomaly_maps\[0\] has shape \(3, 3\) but masks\[0\] has shape \(4, 4\)"):
        pixel_auroc([np.zeros((3, 3))], [np.zeros((4, 4), bool)])
