"""evaluate_category and upsample_map: resolution handling, result layout, validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anobench.metrics import aupro, evaluate_category, image_auroc, pixel_auroc, upsample_map


def test_upsample_map_bilinear_half_pixel_centres():
    # align_corners=False: output x samples input at (x + .5) / 2 - .5 -> -.25 (clamped), .25, .75, 1.25 (clamped)
    out = upsample_map(np.array([[0.0, 1.0]]), (1, 4))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.75, 1.0]])


def test_upsample_map_identity_and_validation():
    a = np.random.rand(5, 7)
    out = upsample_map(a, (5, 7))
    assert out.dtype == np.float32 and out.shape == (5, 7)
    np.testing.assert_array_equal(out, a.astype(np.float32))
    assert upsample_map(np.arange(6, dtype=np.float32).reshape(2, 3), (4, 9)).shape == (4, 9)
    with pytest.raises(ValueError, match=r"must be 2-D, got shape \(1, 2, 2\)"):
        upsample_map(np.zeros((1, 2, 2)), (4, 4))
    with pytest.raises(ValueError, match="two positive integers"):
        upsample_map(np.zeros((2, 2)), (0, 4))


def make_category(rng):
    """Five images: maps at 8x8 model resolution, masks at various original resolutions."""
    mask_shapes = [(16, 16), (12, 20), (16, 16), (24, 8), (16, 16)]
    labels = np.array([0, 1, 1, 0, 1])
    maps, masks = [], []
    for shape, label in zip(mask_shapes, labels):
        mask = np.zeros(shape, bool)
        if label:
            h, w = shape
            mask[h // 4 : h // 2, w // 4 : w // 2] = True
            mask[-2:, -3:] = True  # a second region
        small = np.round(rng.random((8, 8)), 2)
        small[2:4, 2:4] += 0.5 * label  # brighter where the defect is, as a model would
        maps.append(small)
        masks.append(mask)
    scores = np.array([m.max() for m in maps])
    return maps, scores, masks, labels


def test_ground_truth_resolution_upsamples_maps_to_each_mask():
    maps, scores, masks, labels = make_category(np.random.default_rng(0))
    result = evaluate_category(maps, scores, masks, labels)
    up = [upsample_map(a, m.shape) for a, m in zip(maps, masks)]
    assert result.metrics["pro"] == pytest.approx(aupro(up, masks), abs=1e-12)
    assert result.metrics["pixel_auroc"] == pytest.approx(pixel_auroc(up, masks), abs=1e-12)
    assert result.metrics["image_auroc"] == image_auroc(scores, labels)
    # the map-only image AUROC ignores the given scores: reversed scores leave it unchanged
    reversed_result = evaluate_category(maps, -scores, masks, labels)
    assert reversed_result.metrics["image_auroc"] == pytest.approx(1 - result.metrics["image_auroc"])
    assert result.metrics["image_auroc_map_max"] == roc_auc_score(labels, [m.max() for m in maps])
    assert reversed_result.metrics["image_auroc_map_max"] == result.metrics["image_auroc_map_max"]
    flat_scores = np.concatenate([u.ravel() for u in up])
    flat_labels = np.concatenate([m.ravel() for m in masks])
    assert result.metrics["pixel_auroc"] == pytest.approx(roc_auc_score(flat_labels, flat_scores), abs=1e-12)
    assert result.resolution == "ground_truth"
    assert result.fpr_limit == 0.3
    assert (result.n_images, result.n_defective, result.n_regions) == (5, 3, 6)
    assert set(result.timings) == {"upsample_s", "metrics_s"}
    assert all(v >= 0 for v in result.timings.values())


def test_model_resolution_downsamples_masks_nearest():
    maps, scores, masks, labels = make_category(np.random.default_rng(1))
    result = evaluate_category(maps, scores, masks, labels, resolution="model", fpr_limit=0.2)
    # torch "nearest" takes source pixel floor(dst * in / out)
    small_masks = []
    for m in masks:
        rows = np.floor(np.arange(8) * m.shape[0] / 8).astype(int)
        cols = np.floor(np.arange(8) * m.shape[1] / 8).astype(int)
        small_masks.append(m[np.ix_(rows, cols)])
    assert result.metrics["pro"] == pytest.approx(aupro(maps, small_masks, fpr_limit=0.2), abs=1e-12)
    assert result.metrics["pixel_auroc"] == pytest.approx(pixel_auroc(maps, small_masks), abs=1e-12)
    assert result.resolution == "model" and result.fpr_limit == 0.2
    # the protocol's ground-truth resolution gives a different number on the same inputs
    gt = evaluate_category(maps, scores, masks, labels, fpr_limit=0.2)
    assert gt.metrics["pro"] != pytest.approx(result.metrics["pro"], abs=1e-6)


def test_model_resolution_counts_regions_after_downsampling():
    # a 1-pixel region at an odd position of a 16x16 mask vanishes at 8x8 (nearest takes even pixels)
    mask = np.zeros((16, 16), bool)
    mask[1, 1] = True
    mask[8:12, 8:12] = True
    maps = [np.random.rand(8, 8), np.random.rand(8, 8)]
    masks = [mask, np.zeros((16, 16), bool)]
    model = evaluate_category(maps, [1.0, 0.0], masks, [1, 0], resolution="model")
    truth = evaluate_category(maps, [1.0, 0.0], masks, [1, 0])
    assert (model.n_regions, truth.n_regions) == (1, 2)


def test_bad_resolution_names_allowed_values():
    maps, scores, masks, labels = make_category(np.random.default_rng(2))
    with pytest.raises(ValueError, match=r"resolution must be one of 'ground_truth', 'model'; got 'native'"):
        evaluate_category(maps, scores, masks, labels, resolution="native")


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("image_scores", "image_scores has 4 entries but anomaly_maps has 5"),
        ("masks", "masks has 4 entries but anomaly_maps has 5"),
        ("labels", "labels has 4 entries but anomaly_maps has 5"),
    ],
)
def test_length_mismatch_names_the_argument(drop, message):
    maps, scores, masks, labels = make_category(np.random.default_rng(3))
    args = {"anomaly_maps": maps, "image_scores": scores, "masks": masks, "labels": labels}
    args[drop] = args[drop][:4]
    with pytest.raises(ValueError, match=message):
        evaluate_category(**args)


def test_non_2d_inputs_and_bad_limit_are_rejected():
    maps, scores, masks, labels = make_category(np.random.default_rng(4))
    with pytest.raises(ValueError, match=r"anomaly_maps\[2\] must be 2-D, got shape \(1, 8, 8\)"):
        evaluate_category(maps[:2] + [maps[2][None]] + maps[3:], scores, masks, labels)
    with pytest.raises(ValueError, match=r"masks\[0\] must be 2-D"):
        evaluate_category(maps, scores, [masks[0][..., None]] + masks[1:], labels)
    with pytest.raises(ValueError, match=r"fpr_limit must lie in \(0, 1\]"):
        evaluate_category(maps, scores, masks, labels, fpr_limit=0)


def test_labels_disagreeing_with_masks_warn():
    maps, scores, masks, labels = make_category(np.random.default_rng(5))
    labels = labels.copy()
    labels[0] = 1  # image 0 has an empty mask
    with pytest.warns(RuntimeWarning, match=r"disagrees with the mask.*first indices \[0\]"):
        evaluate_category(maps, scores, masks, labels)


def test_all_good_category_gives_nan_pixel_metrics():
    maps = [np.random.rand(8, 8) for _ in range(3)]
    masks = [np.zeros((16, 16), bool)] * 3
    with pytest.warns(RuntimeWarning):
        result = evaluate_category(maps, [0.1, 0.2, 0.3], masks, [0, 0, 0])
    assert all(np.isnan(v) for v in result.metrics.values())
    assert result.n_regions == 0 and result.n_defective == 0


def test_memory_estimate_and_clear_error_when_a_category_cannot_fit():
    from anobench.metrics._pixels import check_memory, pixel_metrics_memory

    masks = [np.zeros((1024, 1024), dtype=bool) for _ in range(100)]
    masks[0][:100, :100] = True
    needed = pixel_metrics_memory(masks, np.dtype(np.float32))
    # at least one float32 copy of the 100 M scores, at most a few times that
    assert 100 * 1024 * 1024 * 4 <= needed <= 3 * 100 * 1024 * 1024 * 4
    with pytest.raises(MemoryError, match=r"need about 0\.\d GiB \(100 masks, 104,857,600 pixels at float32\) "
                                          r"but only 0\.1 GiB is available.*evaluation.resolution=model"):
        check_memory(masks, np.dtype(np.float32), available=2**30 // 10)
    check_memory(masks, np.dtype(np.float32), available=needed)  # fits: no error


def test_without_masks_image_metrics_equal_sklearn_and_pixel_metrics_are_none():
    from sklearn.metrics import average_precision_score

    maps, scores, masks, labels = make_category(np.random.default_rng(6))
    sizes = [m.shape for m in masks]
    result = evaluate_category(maps, scores, None, labels, image_sizes=sizes)
    assert result.metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result.metrics["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert {k for k, v in result.metrics.items() if v is None} == {"pixel_auroc", "pro", "pixel_ap", "pixel_f1_max"}
    # the map-max AUROC keeps its resolution semantics: the max of the map upsampled to the image's size
    with_masks = evaluate_category(maps, scores, masks, labels)
    for key in ("image_auroc", "image_ap", "image_f1_max", "image_auroc_map_max"):
        assert result.metrics[key] == with_masks.metrics[key], key
    up_max = [upsample_map(a, s).max() for a, s in zip(maps, sizes)]
    assert result.metrics["image_auroc_map_max"] == roc_auc_score(labels, up_max)
    record = result.as_record()
    assert record["pixel_metrics"] == "not computed: the dataset has no ground-truth masks"
    assert record["n_regions"] is None and set(record["f1_optimal_thresholds"]) == {"image"}
    assert result.curves.image_roc is not None and result.curves.pixel_roc is None and result.curves.pro is None
    assert "pixel_metrics" not in with_masks.as_record()  # records with masks are unchanged
    model = evaluate_category(maps, scores, None, labels, resolution="model")
    assert model.metrics["image_auroc_map_max"] == roc_auc_score(labels, [m.max() for m in maps])
    with pytest.raises(ValueError, match="needs image_sizes"):
        evaluate_category(maps, scores, None, labels)
    with pytest.raises(ValueError, match="image_sizes has 4 entries but anomaly_maps has 5"):
        evaluate_category(maps, scores, None, labels, image_sizes=sizes[:4])
