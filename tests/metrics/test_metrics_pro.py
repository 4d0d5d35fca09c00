"""AU-PRO: hand-computed golden values, an independent slow reference, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anobench.metrics import aupro, pro_curve, trapezoid

# ---------------------------------------------------------------------------------------------
# Case A: one 3x4 image, one region of 2 pixels (weight 1/2 each), 10 negatives, ties between a
# positive and a negative at 0.5.
#   scores            mask
#   .8 .5 .9 .5       1 1 0 0
#   .1 .2 .3 .4       0 0 0 0
#   .1 .2 .3 .0       0 0 0 0
# negatives: .9 .5 .4 .3 .3 .2 .2 .1 .1 .0
# distinct thresholds (desc) -> (FP, PRO):
#   .9 -> (1/10, 0)      .8 -> (1/10, .5)     .5 -> (2/10, 1)   (pos and neg enter together)
#   .4 -> (3/10, 1)      .3 -> (5/10, 1)      .2 -> (7/10, 1)   .1 -> (9/10, 1)   .0 -> (1, 1)
# curve: (0,0) (.1,0) (.1,.5) (.2,1) (.3,1) (.5,1) (.7,1) (.9,1) (1,1) (1,1)
CASE_A_SCORES = np.array([[0.8, 0.5, 0.9, 0.5], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.0]])
CASE_A_MASK = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)


def test_case_a_exact_curve_points():
    fprs, pros = pro_curve([CASE_A_SCORES], [CASE_A_MASK])
    np.testing.assert_allclose(fprs, [0, 0.1, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1, 1], atol=1e-15)
    np.testing.assert_allclose(pros, [0, 0, 0.5, 1, 1, 1, 1, 1, 1, 1], atol=1e-15)


def test_case_a_ties_form_one_diagonal_step():
    # Area up to .3: (.1,.5)-(.2,1) trapezoid = .1 * .75 = .075; (.2,1)-(.3,1) = .1 -> .175 / .3 = 7/12.
    # Ordering the tie positive-first would give .2/.3 = 2/3, negative-first .15/.3 = 1/2.
    assert aupro([CASE_A_SCORES], [CASE_A_MASK]) == pytest.approx(7 / 12, abs=1e-12)


def test_case_a_limit_between_points_on_flat_part():
    # limit .25 is no curve point: points <= .25 end at (.2,1); next (.3,1) -> y(.25) = 1;
    # area = .075 + correction .05 * 1 = .125 -> / .25 = .5
    assert aupro([CASE_A_SCORES], [CASE_A_MASK], fpr_limit=0.25) == pytest.approx(0.5, abs=1e-12)


def test_case_a_limit_interpolated_on_diagonal():
    # limit .15 falls inside the diagonal (.1,.5)-(.2,1): y(.15) = .5 + .5 * .05/.1 = .75;
    # correction = .5 * (.75 + .5) * .05 = .03125 (the earlier segments have zero area) -> / .15 = 5/24
    assert aupro([CASE_A_SCORES], [CASE_A_MASK], fpr_limit=0.15) == pytest.approx(5 / 24, abs=1e-12)


def test_diagonal_pixels_are_one_region_8_connectivity():
    # mask: (0,0),(0,1) and (1,2): (0,1)-(1,2) touch diagonally -> ONE region of area 3.
    #   scores        mask
    #   .2 .2 .5      1 1 0
    #   .1 .1 .9      0 0 1
    #   .1 .1 .1      0 0 0
    # negatives: .5 and five .1 (N = 6)
    # .9 -> (0, 1/3)   .5 -> (1/6, 1/3)   .2 -> (1/6, 1)   .1 -> (1, 1)
    # area to .3: 1/6 * 1/3 = 1/18, then (1/6 -> .3) at y = 1: .3 - 1/6 -> total .3 - 1/9
    # AU-PRO = (.3 - 1/9) / .3 = 17/27.  (Two regions under 4-connectivity would give 13/18.)
    scores = np.array([[0.2, 0.2, 0.5], [0.1, 0.1, 0.9], [0.1, 0.1, 0.1]])
    mask = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    assert aupro([scores], [mask]) == pytest.approx(17 / 27, abs=1e-12)


# Case C: a good image (all-zero mask) and an image with five regions (four single pixels, one of
# two pixels). N = 6 + 14 = 20 negatives, 5 regions.
#   good image scores (2x3): .7 0 0 / 0 0 0
#   image 2 (4x5):   mask              scores
#                    1 0 1 0 0         .9 0 .8 0 0
#                    0 0 0 0 0         0 .5 0 .3 0
#                    1 0 1 0 1         .3 0 0 0 .8
#                    0 0 0 0 1         0 0 0 0 .3
#   R1=(0,0) .9, R2=(0,2) .8, R3=(2,0) .3, R4=(2,2) 0 (missed), R5={(2,4) .8, (3,4) .3}
#   negatives: .7 (good image), .5, .3, seventeen 0s
#   .9 -> (0, 1/5)   .8 -> (0, 2.5/5)   .7 -> (.05, .5)   .5 -> (.1, .5)
#   .3 -> (.15, 4/5) (R3 and R5's second half enter with one negative)   0 -> (1, 1)
CASE_C_MAPS = [
    np.array([[0.7, 0, 0], [0, 0, 0]]),
    np.array([[0.9, 0, 0.8, 0, 0], [0, 0.5, 0, 0.3, 0], [0.3, 0, 0, 0, 0.8], [0, 0, 0, 0, 0.3]]),
]
CASE_C_MASKS = [
    np.zeros((2, 3), dtype=np.uint8),
    np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1], [0, 0, 0, 0, 1]], dtype=np.uint8) * 255,
]


def test_good_image_and_many_regions_curve():
    fprs, pros = pro_curve(CASE_C_MAPS, CASE_C_MASKS)
    np.testing.assert_allclose(fprs, [0, 0, 0, 0.05, 0.1, 0.15, 1, 1], atol=1e-15)
    np.testing.assert_allclose(pros, [0, 0.2, 0.5, 0.5, 0.5, 0.8, 1, 1], atol=1e-15)


def test_good_image_and_many_regions_aupro():
    # 0 -> .1 at y=.5: .05; (.1,.5)-(.15,.8): .05 * .65 = .0325;
    # .3 lies between (.15,.8) and (1,1): y(.3) = .8 + .2 * .15/.85 = 71/85;
    # correction = .5 * (71/85 + .8) * .15 = 417/3400; total = .0825 + 417/3400 = 279/1360
    # AU-PRO = 279/1360 / .3 = 93/136
    assert aupro(CASE_C_MAPS, CASE_C_MASKS) == pytest.approx(93 / 136, abs=1e-12)


def test_good_image_counts_in_fpr_denominator():
    # Without the good image: N = 14, FPs .5 -> 1/14, .3 -> 2/14; a different value.
    assert aupro(CASE_C_MAPS[1:], CASE_C_MASKS[1:]) != pytest.approx(93 / 136, abs=1e-6)


@pytest.mark.parametrize(
    ("fpr_limit", "expected"),
    [
        (0.1, 0.05 / 0.1),  # .1 is a curve point: area .05 exactly, no correction
        (0.125, (0.05 + 0.5 * (0.5 + 0.65) * 0.025) / 0.125),  # y(.125) = .5 + .3 * .5 = .65
        (1.0, 0.05 + 0.0325 + 0.85 * 0.9),  # whole curve: (.15,.8)-(1,1) = .85 * .9
    ],
)
def test_other_fpr_limits(fpr_limit, expected):
    assert aupro(CASE_C_MAPS, CASE_C_MASKS, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_nonzero_mask_values_are_foreground():
    as_bool = [m != 0 for m in CASE_C_MASKS]
    assert aupro(CASE_C_MAPS, CASE_C_MASKS) == aupro(CASE_C_MAPS, as_bool)


# ---------------------------------------------------------------------------------------------
# Independent reference: loop over distinct thresholds, count directly, integrate segment by segment.


def reference_aupro(maps, masks, fpr_limit):
    regions = []
    for a, m in zip(maps, masks):
        labeled, n = ndimage.label(m != 0, structure=np.ones((3, 3)))
        regions += [a[labeled == r] for r in range(1, n + 1)]
    negatives = np.concatenate([a[m == 0] for a, m in zip(maps, masks)])
    thresholds = sorted({float(v) for a in maps for v in a.ravel()}, reverse=True)
    xs, ys = [0.0], [0.0]
    for t in thresholds:
        xs.append(np.mean(negatives >= t))
        ys.append(np.mean([np.mean(r >= t) for r in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < fpr_limit:
                y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def random_case(rng, n_images, decimals, dtype=np.float64):
    maps, masks = [], []
    for i in range(n_images):
        h, w = rng.integers(6, 14, size=2)
        mask = np.zeros((h, w), dtype=bool) if i % 3 == 0 else rng.random((h, w)) < 0.2
        scores = np.round(rng.random((h, w)) * 0.7 + 0.3 * mask, decimals).astype(dtype)
        maps.append(scores)
        masks.append(mask)
    return maps, masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 0.123, 1.0])
def test_matches_reference_on_random_inputs_with_ties(seed, fpr_limit):
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, n_images=5, decimals=1 if seed % 2 else 2)
    assert aupro(maps, masks, fpr_limit) == pytest.approx(reference_aupro(maps, masks, fpr_limit), abs=1e-9)


def test_matches_reference_float32_maps():
    rng = np.random.default_rng(42)
    maps, masks = random_case(rng, n_images=6, decimals=3, dtype=np.float32)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-9)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.01, 0.77])
def test_aupro_equals_area_under_exact_curve(fpr_limit):
    # aupro integrates a reduced curve; it must agree with MVTec's full curve + trapezoid.
    rng = np.random.default_rng(7)
    maps = [rng.random((40, 40)) for _ in range(4)]  # (almost) all scores distinct
    masks = [np.zeros((40, 40), bool)] + [ndimage.binary_dilation(rng.random((40, 40)) < 0.01, iterations=2) for _ in range(3)]
    fprs, pros = pro_curve(maps, masks)
    assert fprs.size > 6000  # one point per distinct score
    expected = trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit
    assert aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_equals_exact_curve_at_limits_on_and_between_curve_points(seed):
    """The closed-form area must follow trapezoid() wherever the limit falls: exactly on a curve point
    (no correction), on a diagonal step of tied scores, or on a horizontal run between positives."""
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, n_images=6, decimals=1 + seed % 2)
    fprs, pros = pro_curve(maps, masks)
    inner = np.unique(fprs[(fprs > 0) & (fprs < 1)])
    limits = list(inner[:: max(1, inner.size // 8)]) + list((inner[:-1] + inner[1:])[:: max(1, inner.size // 8)] / 2)
    for fpr_limit in limits + [1.0, inner[0] / 2]:
        expected = trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit
        assert aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12), fpr_limit


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_when_the_highest_score_already_passes_the_limit(fpr_limit):
    """The top positive score ties with most negatives: the first diagonal step already crosses the limit."""
    maps = [np.ones((10, 10)), np.ones((10, 10))]
    maps[1][0, :3] = 0.0  # 3 of 199 negatives below the top score
    masks = [np.zeros((10, 10), bool), np.zeros((10, 10), bool)]
    masks[1][5, 5:8] = True
    maps[1][5, 6:8] = 0.5, 0.7  # lower positive scores
    fprs, pros = pro_curve(maps, masks)
    expected = trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit
    assert aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_matches_reference_when_the_curve_never_reaches_the_limit():
    """All negatives tie at the lowest score: the curve jumps from FPR 0 straight to FPR 1, so the value at
    the limit comes only from interpolating on that last segment."""
    rng = np.random.default_rng(3)
    maps, masks = random_case(rng, n_images=4, decimals=2)
    maps = [np.where(m, np.maximum(a, 0.01), 0.0) for a, m in zip(maps, masks)]
    fprs, _ = pro_curve(maps, masks)
    assert not np.any((fprs > 0) & (fprs < 1))  # no curve point between 0 and 1
    for fpr_limit in (0.3, 0.05):
        assert aupro(maps, masks, fpr_limit) == pytest.approx(reference_aupro(maps, masks, fpr_limit), abs=1e-6)


def test_pro_and_pixel_auroc_match_references_at_real_size():
    """Three 1024² maps with ties (two decimals) and MVTec-like regions, against the threshold-loop reference
    and sklearn, as `evaluate_category` computes both from one split."""
    from sklearn.metrics import roc_auc_score

    from anobench.metrics import evaluate_category

    rng = np.random.default_rng(11)
    masks = [np.zeros((1024, 1024), bool) for _ in range(3)]
    yy, xx = np.ogrid[:1024, :1024]
    for m in masks[1:]:
        for _ in range(4):
            cy, cx, r = rng.integers(100, 900), rng.integers(100, 900), rng.integers(5, 60)
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = [np.round(rng.random((1024, 1024)) * 0.8 + 0.2 * m, 2) for m in masks]
    result = evaluate_category(maps, [a.max() for a in maps], masks, [0, 1, 1])
    assert result.metrics["pro"] == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-6)
    flat = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))
    assert result.metrics["pixel_auroc"] == pytest.approx(flat, abs=1e-6)


def test_perfect_and_inverted_maps():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    mask[6, 6] = True
    assert aupro([mask * 1.0], [mask]) == 1.0
    # every negative scores above every positive: PRO stays 0 while FPR goes to 1
    assert aupro([1.0 - mask], [mask]) == 0.0


# ---------------------------------------------------------------------------------------------
# Edge cases and validation


def test_no_regions_returns_nan_with_reason():
    with pytest.warns(RuntimeWarning, match="no anomalous region"):
        value = aupro([np.random.rand(4, 4)], [np.zeros((4, 4), bool)])
    assert np.isnan(value)


def test_no_negative_pixels_returns_nan_with_reason():
    with pytest.warns(RuntimeWarning, match="no normal pixel"):
        value = aupro([np.random.rand(4, 4)], [np.ones((4, 4), bool)])
    assert np.isnan(value)


def test_shape_mismatch_names_index_and_shapes():
    maps = [np.zeros((4, 4)), np.zeros((4, 5))]
    masks = [np.zeros((4, 4), bool), np.zeros((5, 4), bool)]
    with pytest.raises(ValueError, match=r"anomaly_maps\[1\] has shape \(4, 5\) but masks\[1\] has shape \(5, 4\)"):
        aupro(maps, masks)


def test_length_mismatch_and_non_2d_inputs():
    with pytest.raises(ValueError, match="2 anomaly maps but 1 masks"):
        aupro([np.zeros((2, 2))] * 2, [np.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"anomaly_maps\[0\] must be 2-D, got shape \(1, 2, 2\)"):
        aupro([np.zeros((1, 2, 2))], [np.zeros((1, 2, 2))])
    with pytest.raises(ValueError, match="no anomaly maps"):
        aupro([], [])


def test_nan_scores_are_rejected_with_index():
    maps = [np.zeros((3, 3)), np.full((3, 3), np.nan)]
    masks = [np.eye(3, dtype=bool)] * 2
    with pytest.raises(ValueError, match=r"anomaly_maps\[1\] contains NaN"):
        aupro(maps, masks)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_fpr_limit_must_lie_in_unit_interval(bad):
    with pytest.raises(ValueError, match=r"fpr_limit must lie in \(0, 1\]"):
        aupro(CASE_C_MAPS, CASE_C_MASKS, fpr_limit=bad)


# ---------------------------------------------------------------------------------------------
# trapezoid: MVTec generic_util semantics


def test_trapezoid_limit_on_a_sample_needs_no_correction():
    assert trapezoid([0, 1, 2], [0, 1, 1], x_max=1) == 0.5


def test_trapezoid_interpolates_at_limit():
    # y(1.5) = 1 + (3 - 1) * .5 = 2; area = .5 + .5 * (1 + 2) * .5 = 1.25
    assert trapezoid([0, 1, 2], [0, 1, 3], x_max=1.5) == 1.25


def test_trapezoid_without_limit_and_beyond_last_point():
    assert trapezoid([0, 1, 2], [0, 1, 1]) == 1.5
    assert trapezoid([0, 1, 2], [0, 1, 1], x_max=5) == 1.5  # no extrapolation past the last sample
    assert trapezoid([1, 2], [1, 1], x_max=0.5) == 0.0


def test_trapezoid_drops_non_finite_points_with_warning():
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert trapezoid([0, 1, np.nan, 2], [0, 1, 5, 1]) == 1.5


def test_pro_curve_without_regions_has_nan_pros():
    with pytest.warns(RuntimeWarning, match="no anomalous region"):
        fprs, pros = pro_curve([np.array([[0.2, 0.1]])], [np.zeros((1, 2), bool)])
    np.testing.assert_allclose(fprs, [0, 0.5, 1, 1])
    assert np.isnan(pros[1:-1]).all() and pros[0] == 0 and pros[-1] == 1


# --- the shared pixel bookkeeping: parallel chunks and the float32 key sort -------------------------
def test_float32_order_keys_sort_like_numpy_and_invert_exactly():
    """The positives are sorted as integer keys of their float32 bits: the key order must be numpy's order
    (negatives, -0.0 beside 0.0, ties) and decoding the keys must give back the very same floats."""
    from anobench.metrics._pixels import float32_from_order_keys, float32_order_keys

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.standard_normal(500), [-0.0, 0.0, 0.0, -1e-30, 1e-30, -3.5, -3.5, 7.0, -np.inf]])
    scores = scores.astype(np.float32)
    rng.shuffle(scores)
    keys = float32_order_keys(scores)
    assert keys.dtype == np.uint32
    np.testing.assert_array_equal(scores[np.argsort(keys, kind="stable")], np.sort(scores))
    np.testing.assert_array_equal(float32_from_order_keys(np.sort(keys)), np.sort(scores))
    np.testing.assert_array_equal(float32_from_order_keys(keys).view(np.uint32), scores.view(np.uint32))  # bit-exact


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5])
def test_metrics_do_not_depend_on_how_negatives_are_chunked(n_chunks):
    """Negatives are sorted in per-CPU chunks that are never merged; any chunking gives the same counts."""
    from dataclasses import replace

    from anobench.metrics._pixels import split_pixels
    from anobench.metrics.auroc import auroc_from_split
    from anobench.metrics.pro import aupro_from_split

    rng = np.random.default_rng(1)
    masks = [rng.random((40, 40)) > 0.9 for _ in range(4)] + [np.zeros((40, 40), bool)]
    maps = [np.round(rng.random((40, 40)) + 0.3 * m, 2).astype(np.float32) for m in masks]  # many ties
    whole = split_pixels(maps.__getitem__, masks, np.dtype(np.float32), with_regions=True)
    negatives = np.concatenate(whole.neg_chunks)
    rng.shuffle(negatives)
    chunks = tuple(np.sort(c) for c in np.array_split(negatives, n_chunks))
    chunked = replace(whole, neg_chunks=chunks)
    assert auroc_from_split(chunked) == auroc_from_split(whole)
    assert aupro_from_split(chunked, 0.3) == pytest.approx(aupro_from_split(whole, 0.3), abs=1e-12)
    assert auroc_from_split(whole) == pytest.approx(roc_auc_score(
        np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])), abs=1e-12)
