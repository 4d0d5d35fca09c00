"""Per-run pictures: input | [ground-truth outline | ] [predicted region | ] heatmap panels, and the ROC / PRO curves.

Why: an AUROC alone hides a method that fires on the background or misses thin scratches; the maps
next to the defects show it. Every panel of a run uses ONE colour scale (the min and max over all
test maps of the run), so a bright map means a high score compared with the other images, never a
per-image stretch of noise.

The curves are the metrics' own (`anobench.metrics.curves`, read off the pixel ranking that gave
result.json's pixel AUROC and PRO), thinned for drawing; nothing is recomputed here. Drawn on matplotlib
`Figure` objects (no pyplot, so no global state and no display needed). A dataset without ground-truth masks
has no pixel curves and no ground-truth column: those are left out, not drawn empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anobench.metrics.curves import MetricCurves
from anobench.metrics.evaluate import CategoryEvaluation

FIGURES_DIR = "figures"
PANELS_DIR = "panels"
CURVES_FILE = "curves.png"
MANIFEST_FILE = "figures.json"
HEATMAP_CMAP = "jet"
DISPLAY_SIZE = 320  # panels show images at most this many pixels wide: small files, quick to write


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


# --- curves ---------------------------------------------------------------------------------------
def write_curves(path: Path, curves: MetricCurves, metrics: dict[str, float | None], fpr_limit: float, title: str,
                 no_pixel_note: str | None = None) -> Path:
    """ROC (image and pixel) and PRO side by side, as the metrics computed them; the PRO limit is shaded.

    `no_pixel_note`: the pixel metrics were not computed (no masks, the note says so): the image ROC alone."""
    from matplotlib.figure import Figure

    if no_pixel_note is not None:
        fig = Figure(figsize=(5.2, 4.6), dpi=100)
        roc_ax = fig.subplots(1, 1)
        if curves.image_roc is not None:
            roc_ax.plot(curves.image_roc.x, curves.image_roc.y,
                        label=f"image ROC (AUROC {_number(metrics.get('image_auroc'))})")
        roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
                   title="image ROC")
        roc_ax.legend(loc="lower right", fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.text(0.5, 0.005, f"no pixel ROC or PRO: pixel metrics {no_pixel_note}", ha="center", fontsize=7,
                 color="grey")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(path)
        return path
    fig = Figure(figsize=(10, 4.4), dpi=100)
    roc_ax, pro_ax = fig.subplots(1, 2)
    if curves.image_roc is not None:
        roc_ax.plot(curves.image_roc.x, curves.image_roc.y,
                    label=f"image ROC (AUROC {metrics.get('image_auroc', float('nan')):.3f})")
    if curves.pixel_roc is not None:
        roc_ax.plot(curves.pixel_roc.x, curves.pixel_roc.y,
                    label=f"pixel ROC (AUROC {metrics.get('pixel_auroc', float('nan')):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    roc_ax.legend(loc="lower right", fontsize=8)

    pro = curves.pro
    if pro is not None:
        pro_ax.plot(pro.x, pro.y, color="tab:green",
                    label=f"PRO (AU-PRO@{fpr_limit:g} {metrics.get('pro', float('nan')):.3f})")
        inside = pro.x <= fpr_limit
        x = np.append(pro.x[inside], fpr_limit)
        y = np.append(pro.y[inside], np.interp(fpr_limit, pro.x, pro.y))
        pro_ax.fill_between(x, y, color="tab:green", alpha=0.2)
    pro_ax.axvline(fpr_limit, color="tab:red", linestyle="--", linewidth=1.2, label=f"integration limit FPR={fpr_limit:g}")
    pro_ax.set(xlabel="false positive rate (pixels)", ylabel="per-region overlap", xlim=(0, 1), ylim=(0, 1.01),
               title="PRO")
    pro_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    shown = [c for c in (curves.pixel_roc, pro) if c is not None]
    if shown:
        fig.text(0.5, 0.005, "pixel curves: " + ", ".join(f"{len(c.x)} of {c.n_exact}" for c in shown)
                 + " exact points drawn (the metrics' own curves)", ha="center", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    return path


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- panels -----------------------------------------------------------------------------------
def _display_size(width: int, height: int) -> tuple[int, int]:
    factor = min(1.0, DISPLAY_SIZE / max(width, height))
    return max(1, round(height * factor)), max(1, round(width * factor))


def write_panel(path: Path, image: np.ndarray, mask: np.ndarray | None, anomaly_map: np.ndarray, scale: ColourScale,
                title: str, pixel_threshold: float | None = None, threshold_label: str | None = None) -> Path:
    """input | ground-truth outline | [predicted region | ] heatmap overlay, with the run's colour bar.

    The predicted region (map >= `pixel_threshold`, yellow, the ground truth in red beside it) is drawn only
    when the run records a pixel threshold; `threshold_label` says how it was chosen. `mask` None: the dataset
    has no ground truth, so there is no ground-truth column (an empty one would read "no defect").
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    predicted = pixel_threshold is not None
    with_truth = mask is not None
    if mask is None:
        mask = np.zeros(np.shape(anomaly_map), dtype=bool)
    n_axes = 2 + with_truth + predicted
    fig = Figure(figsize=(3.5 * n_axes, 3.7), dpi=100)
    axes = fig.subplots(1, n_axes)
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    if with_truth:
        axes[1].imshow(image)
        if mask.any():
            axes[1].contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.2)
        axes[1].set_title("ground truth" if mask.any() else "ground truth (no defect)", fontsize=9)
    if predicted:
        region = (np.asarray(anomaly_map) >= pixel_threshold).astype(float)
        region_ax = axes[1 + with_truth]
        region_ax.imshow(image)
        if region.any():
            region_ax.contourf(region, levels=[0.5, 1.5], colors="yellow", alpha=0.35)
            region_ax.contour(region, levels=[0.5], colors="yellow", linewidths=1.2)
        if mask.any():
            region_ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        region_ax.set_title(f"predicted: map >= {pixel_threshold:.4g}" + (f"\n({threshold_label})" if threshold_label
                                                                       else ""), fontsize=8)
    heat = axes[-1]
    grey = image.astype(np.float64).mean(axis=2, keepdims=True) / 255.0
    overlay = 0.5 * np.repeat(grey, 3, axis=2) + 0.5 * heatmap_rgba(anomaly_map, scale)[..., :3]
    heat.imshow(np.clip(overlay, 0.0, 1.0))
    if mask.any():
        heat.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    heat.set_title("anomaly map (run-wide scale)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(Normalize(scale.vmin, scale.vmax), HEATMAP_CMAP), ax=heat, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path)
    return path


def write_panels(
    out_dir: Path,
    maps: Sequence[np.ndarray],
    scores: np.ndarray,
    samples: Sequence[Any],
    get_mask: Callable[[int], np.ndarray] | None,
    scale: ColourScale,
    max_per_defect: int,
    pixel_threshold: float | None = None,
    threshold_label: str | None = None,
) -> list[dict[str, Any]]:
    """One panel per selected test image; returns what each panel shows (for the manifest). `get_mask` None: no
    ground truth to draw."""
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
        mask = None if get_mask is None else downsample_mask(get_mask(i), size)
        name = panel_name(sample)
        write_panel(out_dir / name, pixels, mask, upsample_map(maps[i], size), scale,
                    f"{sample.defect_type} / {Path(sample.image_path).name}   score {float(scores[i]):.4g}",
                    pixel_threshold, threshold_label)
        written.append({"file": f"{PANELS_DIR}/{name}", "index": i, "defect_type": sample.defect_type,
                        "image": str(sample.image_path), "score": float(scores[i])})
    return written


# --- entry point --------------------------------------------------------------------------------
def write_run_figures(
    run_dir: str | Path,
    maps: Sequence[np.ndarray],
    scores: np.ndarray,
    samples: Sequence[Any],
    get_mask: Callable[[int], np.ndarray] | None,
    evaluation: CategoryEvaluation,
    max_per_defect: int = 3,
    title: str = "",
    pixel_threshold: float | None = None,
    threshold_label: str | None = None,
) -> dict[str, Any]:
    """Write <run_dir>/figures/{panels/*.png, curves.png, figures.json}; return the manifest.

    maps / scores / samples are the evaluated test images in test-sample order, ``get_mask(i)`` returns
    sample i's mask at its original resolution (None: the dataset has no masks), ``evaluation`` is what the metrics computed (its metrics
    label the curves, its curves are drawn). Paths in the manifest are relative to the figures folder. With a
    ``pixel_threshold`` (result.json's ``thresholds.pixel``) each panel also shows the predicted region.
    """
    if len(maps) != len(samples) or len(scores) != len(samples):
        raise ValueError(f"got {len(maps)} maps and {len(scores)} scores for {len(samples)} test samples")
    if int(max_per_defect) < 0:
        raise ValueError(f"max_per_defect must be >= 0, got {max_per_defect}")
    if evaluation.curves is None:
        raise ValueError("the evaluation holds no curves (evaluate_category(..., with_curves=True) draws them)")
    figures_dir = Path(run_dir) / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    scale = run_colour_scale(maps)
    panels = write_panels(figures_dir / PANELS_DIR, maps, scores, samples, get_mask, scale, int(max_per_defect),
                          pixel_threshold, threshold_label)
    write_curves(figures_dir / CURVES_FILE, evaluation.curves, evaluation.metrics, evaluation.fpr_limit, title,
                 no_pixel_note=evaluation.pixel_metrics_note)
    manifest = {
        "colour_scale": {"vmin": scale.vmin, "vmax": scale.vmax, "cmap": HEATMAP_CMAP, "scope": "run"},
        "max_per_defect": int(max_per_defect),
        "panels": panels,
        "curves": CURVES_FILE,
        "curve_points": {name: {"drawn": int(len(c.x)), "exact": int(c.n_exact)}
                         for name, c in vars(evaluation.curves).items() if c is not None},
        "pro_fpr_limit": evaluation.fpr_limit,
        "pixel_threshold": None if pixel_threshold is None else {"value": pixel_threshold, "label": threshold_label},
    }
    (figures_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest
