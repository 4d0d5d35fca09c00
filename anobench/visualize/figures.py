"""Per-run pictures: input | ground-truth outline | heatmap panels, and the ROC / PRO curves.

Why: an AUROC alone hides a method that fires on the background or misses thin scratches; the maps
next to the defects show it. Every panel of a run uses ONE colour scale (the min and max over all
test maps of the run), so a bright map means a high score compared with the other images, never a
per-image stretch of noise.

Curves are drawn from a grid of thresholds (quantiles of the run's scores), counted image by image at
the evaluation resolution, so the figure never sorts all pixels of a category at once; the numbers in
the legends are the exact metrics of result.json. Drawn on matplotlib `Figure` objects (no pyplot,
so no global state and no display needed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

FIGURES_DIR = "figures"
PANELS_DIR = "panels"
CURVES_FILE = "curves.png"
MANIFEST_FILE = "figures.json"
HEATMAP_CMAP = "jet"
DISPLAY_SIZE = 320  # panels show images at most this many pixels wide: small files, quick to write
N_THRESHOLDS = 512  # curve resolution (quantiles of the scores)


@dataclass(frozen=True)
class ColourScale:
    """The value range mapped onto the colour map; one per run, shared by all its panels."""

    vmin: float
    vmax: float


def run_colour_scale(maps: Sequence[np.ndarray]) -> ColourScale:
    """Min and max over every finite score of every map of the run (not per image)."""
    lows = [float(np.nanmin(np.where(np.isfinite(m), m, np.nan))) for m in maps if np.isfinite(m).any()]
    highs = [float(np.nanmax(np.where(np.isfinite(m), m, np.nan))) for m in maps if np.isfinite(m).any()]
    if not lows:
        return ColourScale(0.0, 1.0)
    vmin, vmax = min(lows), max(highs)
    if vmax <= vmin:  # constant maps: any non-empty range shows them in one colour
        vmax = vmin + 1.0
    return ColourScale(vmin, vmax)


def heatmap_rgba(anomaly_map: np.ndarray, scale: ColourScale, cmap: str = HEATMAP_CMAP) -> np.ndarray:
    """H×W×4 float colours of a map under the run's colour scale (values outside are clipped)."""
    from matplotlib import colormaps

    normed = (np.asarray(anomaly_map, dtype=np.float64) - scale.vmin) / (scale.vmax - scale.vmin)
    return colormaps[cmap](np.clip(np.nan_to_num(normed, nan=0.0), 0.0, 1.0))


def select_samples(samples: Sequence[Any], max_per_defect: int) -> list[int]:
    """Indices of the first ``max_per_defect`` test images of every defect type (good included), in test order."""
    taken: dict[str, int] = {}
    chosen = []
    for i, sample in enumerate(samples):
        n = taken.get(sample.defect_type, 0)
        if n < max_per_defect:
            chosen.append(i)
            taken[sample.defect_type] = n + 1
    return chosen


def panel_name(sample: Any) -> str:
    """File name of a sample's panel: ``<defect>_<image stem>.png`` with unsafe characters replaced."""
    stem = f"{sample.defect_type}_{Path(sample.image_path).stem}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".png"


# --- curves -----------------------------------------------------------------------------------
@dataclass
class Curves:
    """Pixel ROC, PRO and image ROC as plotted (FPR ascending; grid approximation for the pixel curves)."""

    pixel_fpr: np.ndarray
    pixel_tpr: np.ndarray
    pro_fpr: np.ndarray
    pro: np.ndarray
    image_fpr: np.ndarray
    image_tpr: np.ndarray
    n_thresholds: int


def score_thresholds(maps: Sequence[np.ndarray], n: int = N_THRESHOLDS, max_values: int = 2_000_000) -> np.ndarray:
    """Ascending distinct quantiles of the run's scores (from an even subsample of at most ``max_values``)."""
    total = sum(int(np.size(m)) for m in maps)
    step = max(1, total // max_values)
    values = np.concatenate([np.asarray(m, dtype=np.float64).ravel()[::step] for m in maps])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.array([0.0])
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, n)))


def _counts_at_or_above(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Given per-pixel counts of thresholds <= value, the number of pixels >= each threshold."""
    hist = np.bincount(bins, minlength=n_bins + 1)
    return np.cumsum(hist[::-1])[::-1][1:]


def pixel_curves(
    get_map: Callable[[int], np.ndarray],
    get_mask: Callable[[int], np.ndarray],
    n_images: int,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, PRO) at each threshold (ascending), counted one image at a time.

    PRO follows MVTec's definition (mean over all 8-connected GT regions of the covered fraction,
    FPR over all GT-negative pixels); only the thresholds are a grid instead of every distinct score.
    """
    k = thresholds.size
    neg = np.zeros(k, dtype=np.int64)
    pos = np.zeros(k, dtype=np.int64)
    pro_sum = np.zeros(k, dtype=np.float64)
    n_neg = n_pos = n_regions = 0
    structure = np.ones((3, 3), dtype=int)
    for i in range(n_images):
        mask = np.asarray(get_mask(i)) != 0
        bins = np.searchsorted(thresholds, np.asarray(get_map(i), dtype=np.float64), side="right")
        neg += _counts_at_or_above(bins[~mask], k)
        n_neg += int((~mask).sum())
        if not mask.any():
            continue
        pos += _counts_at_or_above(bins[mask], k)
        n_pos += int(mask.sum())
        labeled, n_comp = ndimage.label(mask, structure=structure)
        region = labeled[mask] - 1
        hist = np.bincount(region * (k + 1) + bins[mask], minlength=n_comp * (k + 1)).reshape(n_comp, k + 1)
        covered = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        pro_sum += (covered / hist.sum(axis=1, keepdims=True)).sum(axis=0)
        n_regions += n_comp
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = neg / n_neg if n_neg else np.full(k, np.nan)
        tpr = pos / n_pos if n_pos else np.full(k, np.nan)
        pro = pro_sum / n_regions if n_regions else np.full(k, np.nan)
    return fpr, tpr, pro


def _closed(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds ascending -> FPR descending; flip and add (0, 0) and (1, 1)."""
    return np.concatenate([[0.0], x[::-1], [1.0]]), np.concatenate([[0.0], y[::-1], [1.0]])


def compute_curves(
    maps: Sequence[np.ndarray],
    scores: np.ndarray,
    labels: np.ndarray,
    get_mask: Callable[[int], np.ndarray],
    resolution: str = "ground_truth",
    n_thresholds: int = N_THRESHOLDS,
) -> Curves:
    """The run's curves at its evaluation resolution (maps upsampled to the masks, or masks downsampled)."""
    from sklearn.metrics import roc_curve

    from anobench.metrics.evaluate import downsample_mask, upsample_map

    thresholds = score_thresholds(maps, n_thresholds)
    if resolution == "model":
        get_map = maps.__getitem__

        def mask_at(i: int) -> np.ndarray:
            return downsample_mask(get_mask(i), np.shape(maps[i]))
    else:
        masks: dict[int, np.ndarray] = {}

        def mask_at(i: int) -> np.ndarray:
            masks[i] = get_mask(i)
            return masks[i]

        def get_map(i: int) -> np.ndarray:
            return upsample_map(maps[i], np.shape(masks.pop(i)))

    # pixel_curves asks for the mask of image i before its map, so the mask's size is known.
    fpr, tpr, pro = pixel_curves(get_map, mask_at, len(maps), thresholds)
    pixel_fpr, pixel_tpr = _closed(fpr, tpr)
    pro_fpr, pro_y = _closed(fpr, pro)
    labels = np.asarray(labels)
    if np.unique(labels).size == 2:
        image_fpr, image_tpr, _ = roc_curve(labels, np.asarray(scores))
    else:
        image_fpr = image_tpr = np.array([np.nan])
    return Curves(pixel_fpr, pixel_tpr, pro_fpr, pro_y, image_fpr, image_tpr, int(thresholds.size))


def write_curves(path: Path, curves: Curves, metrics: dict[str, float], fpr_limit: float, title: str) -> Path:
    """ROC (image and pixel) and PRO side by side; the PRO integration limit is marked and shaded."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.4), dpi=100)
    roc_ax, pro_ax = fig.subplots(1, 2)
    roc_ax.plot(curves.image_fpr, curves.image_tpr,
                label=f"image ROC (AUROC {metrics.get('image_auroc', float('nan')):.3f})")
    roc_ax.plot(curves.pixel_fpr, curves.pixel_tpr, label=f"pixel ROC (AUROC {metrics.get('pixel_auroc', float('nan')):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    roc_ax.legend(loc="lower right", fontsize=8)

    pro_ax.plot(curves.pro_fpr, curves.pro, color="tab:green",
                label=f"PRO (AU-PRO@{fpr_limit:g} {metrics.get('pro', float('nan')):.3f})")
    inside = curves.pro_fpr <= fpr_limit
    if np.isfinite(curves.pro).all():
        x = np.append(curves.pro_fpr[inside], fpr_limit)
        y = np.append(curves.pro[inside], np.interp(fpr_limit, curves.pro_fpr, curves.pro))
        pro_ax.fill_between(x, y, color="tab:green", alpha=0.2)
    pro_ax.axvline(fpr_limit, color="tab:red", linestyle="--", linewidth=1.2, label=f"integration limit FPR={fpr_limit:g}")
    pro_ax.set(xlabel="false positive rate (pixels)", ylabel="per-region overlap", xlim=(0, 1), ylim=(0, 1.01),
               title="PRO")
    pro_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.005, f"pixel curves on {curves.n_thresholds} score thresholds; legend values are exact",
             ha="center", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    return path


def grid_aupro(curves: Curves, fpr_limit: float) -> float | None:
    """AU-PRO of the plotted (grid) curve, kept beside the exact value to show how close the figure is."""
    from anobench.metrics.pro import trapezoid

    if not np.isfinite(curves.pro).all():
        return None
    return float(trapezoid(curves.pro_fpr, curves.pro, x_max=fpr_limit) / fpr_limit)


# --- panels -----------------------------------------------------------------------------------
def _display_size(width: int, height: int) -> tuple[int, int]:
    factor = min(1.0, DISPLAY_SIZE / max(width, height))
    return max(1, round(height * factor)), max(1, round(width * factor))


def write_panel(path: Path, image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray, scale: ColourScale,
                title: str) -> Path:
    """input | ground-truth outline | heatmap overlay, with the run's colour bar."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 3.7), dpi=100)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(image)
    if mask.any():
        axes[1].contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    axes[1].set_title("ground truth" if mask.any() else "ground truth (no defect)", fontsize=9)
    grey = image.astype(np.float64).mean(axis=2, keepdims=True) / 255.0
    overlay = 0.5 * np.repeat(grey, 3, axis=2) + 0.5 * heatmap_rgba(anomaly_map, scale)[..., :3]
    axes[2].imshow(np.clip(overlay, 0.0, 1.0))
    if mask.any():
        axes[2].contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    axes[2].set_title("anomaly map (run-wide scale)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(Normalize(scale.vmin, scale.vmax), HEATMAP_CMAP), ax=axes[2], fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path)
    return path


def write_panels(
    out_dir: Path,
    maps: Sequence[np.ndarray],
    scores: np.ndarray,
    samples: Sequence[Any],
    get_mask: Callable[[int], np.ndarray],
    scale: ColourScale,
    max_per_defect: int,
) -> list[dict[str, Any]]:
    """One panel per selected test image; returns what each panel shows (for the manifest)."""
    from PIL import Image

    from anobench.data.mvtec import load_image
    from anobench.metrics.evaluate import downsample_mask, upsample_map

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in select_samples(samples, max_per_defect):
        sample = samples[i]
        image = load_image(sample.image_path)
        size = _display_size(*image.size)
        pixels = np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)
        mask = downsample_mask(get_mask(i), size)
        name = panel_name(sample)
        write_panel(out_dir / name, pixels, mask, upsample_map(maps[i], size), scale,
                    f"{sample.defect_type} / {Path(sample.image_path).name}   score {float(scores[i]):.4g}")
        written.append({"file": f"{PANELS_DIR}/{name}", "index": i, "defect_type": sample.defect_type,
                        "image": str(sample.image_path), "score": float(scores[i])})
    return written


# --- entry point --------------------------------------------------------------------------------
def write_run_figures(
    run_dir: str | Path,
    maps: Sequence[np.ndarray],
    scores: np.ndarray,
    samples: Sequence[Any],
    get_mask: Callable[[int], np.ndarray],
    results: dict[str, Any],
    max_per_defect: int = 3,
    title: str = "",
) -> dict[str, Any]:
    """Write <run_dir>/figures/{panels/*.png, curves.png, figures.json}; return the manifest.

    maps / scores / samples are in test-sample order (as `AnomalyModule` keeps them after testing),
    ``get_mask(i)`` returns sample i's mask at its original resolution, ``results`` is the evaluator's
    output (its metrics, resolution and fpr_limit label the curves). Paths in the manifest are
    relative to the figures folder.
    """
    if len(maps) != len(samples) or len(scores) != len(samples):
        raise ValueError(f"got {len(maps)} maps and {len(scores)} scores for {len(samples)} test samples")
    if int(max_per_defect) < 0:
        raise ValueError(f"max_per_defect must be >= 0, got {max_per_defect}")
    figures_dir = Path(run_dir) / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    scale = run_colour_scale(maps)
    panels = write_panels(figures_dir / PANELS_DIR, maps, scores, samples, get_mask, scale, int(max_per_defect))
    curves = compute_curves(maps, scores, np.array([s.label for s in samples]), get_mask,
                            results.get("resolution", "ground_truth"))
    metrics = results.get("metrics", {})
    fpr_limit = float(results.get("fpr_limit", 0.3))
    write_curves(figures_dir / CURVES_FILE, curves, metrics, fpr_limit, title)
    manifest = {
        "colour_scale": {"vmin": scale.vmin, "vmax": scale.vmax, "cmap": HEATMAP_CMAP, "scope": "run"},
        "max_per_defect": int(max_per_defect),
        "panels": panels,
        "curves": CURVES_FILE,
        "curve_thresholds": curves.n_thresholds,
        "pro_fpr_limit": fpr_limit,
        "pro_on_threshold_grid": grid_aupro(curves, fpr_limit),
    }
    (figures_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest
