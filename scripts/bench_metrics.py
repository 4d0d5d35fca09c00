"""Time and memory of the metrics on a full-resolution category.

Builds N synthetic S x S masks (about half the images good, a few percent anomalous pixels in tens
of regions) and model-resolution maps that are brighter over the defects, upsampled to S x S. Each
measured call runs in a fresh spawned process, which reports its own peak RSS (ru_maxrss) and the
RSS it started the call with, so the "extra" column is the memory the call itself needed.

    .venv/bin/python scripts/bench_metrics.py [--n 100] [--size 1024] [--mvtec-root PATH/bottle]

With --mvtec-root, the same measurements also run on that category's real test masks (full
resolution) with synthetic maps. "all pixel metrics" times what evaluate_category computes per pixel (one
split: pixel AUROC, PRO, pixel AP and pixel F1-max); it and "pro + pixel_auroc" also run --repeat times,
alternating, and the median ratio of the two is printed (pixel AP / F1-max reuse the split's ranking). Comparisons with sklearn's roc_auc_score and with MVTec's exact
curve (pro_curve + trapezoid, argsort over all pixels) run unless --no-compare, and so does
anomalib's AUPRO when anomalib is installed (`pip install -e '.[bench]'`, benchmark-only).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def synthetic_masks(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Every second image defective, with 1-3 elliptical regions of radius 3-14 % of the side."""
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.ogrid[:size, :size]
    for i in range(1, n, 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.1, 0.9, size=2) * size
            ry, rx = rng.uniform(0.03, 0.14, size=2) * size
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def model_maps(masks: list[np.ndarray], model_size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise at model resolution, raised where the (downsampled) mask is: a plausible detector."""
    import torch
    import torch.nn.functional as F

    maps = np.empty((len(masks), model_size, model_size), dtype=np.float32)
    for i, m in enumerate(masks):
        small = F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(model_size,) * 2, mode="area")
        signal = ndimage.gaussian_filter(small[0, 0].numpy(), 3)
        noise = ndimage.gaussian_filter(rng.standard_normal((model_size, model_size)), 2)
        maps[i] = noise / noise.std() + signal * rng.uniform(0.5, 4.0)
    return maps


def _current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _child(job: str, data_dir: str, queue: mp.Queue) -> None:
    """Runs in a fresh process: load inputs, run one job, report time, value and memory."""
    from sklearn.metrics import roc_auc_score

    from anobench.metrics import aupro, evaluate_category, pixel_auroc, pro_curve, trapezoid, upsample_map

    d = Path(data_dir)
    small = np.load(d / "small.npy")
    masks = [np.load(p) for p in sorted(d.glob("mask_*.npy"))]  # one file each: sizes may differ
    labels = np.array([int(m.any()) for m in masks])
    maps = None
    if job not in ("upsample_map", "evaluate_category"):
        maps = [np.load(p) for p in sorted(d.glob("map_*.npy"))]

    before = _current_rss_kb()
    t0 = time.perf_counter()
    if job == "upsample_map":
        for a, m in zip(small, masks):
            upsample_map(a, m.shape)
        value = float("nan")
    elif job == "aupro":
        value = aupro(maps, masks)
    elif job == "pixel_auroc":
        value = pixel_auroc(maps, masks)
    elif job == "evaluate_category":
        result = evaluate_category(list(small), small.reshape(len(small), -1).max(1), masks, labels)
        value = result.metrics["pro"]
    elif job == "pro + pixel_auroc":  # what evaluate_category does, minus the upsampling: one split, both metrics
        from anobench.metrics._pixels import common_score_dtype, split_pixels
        from anobench.metrics.auroc import auroc_from_split
        from anobench.metrics.pro import aupro_from_split

        split = split_pixels(maps.__getitem__, masks, common_score_dtype(maps), with_regions=True)
        value = aupro_from_split(split, 0.3)
        auroc_from_split(split)
    elif job == "all pixel metrics":  # the same split, plus pixel AP and F1-max from its ranking
        from anobench.metrics._pixels import common_score_dtype, split_pixels
        from anobench.metrics.auroc import auroc_from_split
        from anobench.metrics.precision import pixel_precision_from_split
        from anobench.metrics.pro import aupro_from_split

        split = split_pixels(maps.__getitem__, masks, common_score_dtype(maps), with_regions=True)
        value = aupro_from_split(split, 0.3)
        auroc_from_split(split)
        pixel_precision_from_split(split)
    elif job == "sklearn average_precision":
        from sklearn.metrics import average_precision_score

        y = np.concatenate([m.ravel() for m in masks])
        s = np.concatenate([a.ravel() for a in maps])
        value = float(average_precision_score(y, s))
    elif job == "anomalib AUPRO":
        import torch
        from anomalib.metrics.aupro import _AUPRO  # the torchmetrics metric behind anomalib.metrics.AUPRO

        metric = _AUPRO(fpr_limit=0.3)
        for a, m in zip(maps, masks):  # update per image, as a test loop does
            metric.update(torch.from_numpy(a)[None], torch.from_numpy(m.astype(np.int64))[None])
        value = float(metric.compute())
    elif job == "sklearn roc_auc_score":
        y = np.concatenate([m.ravel() for m in masks])
        s = np.concatenate([a.ravel() for a in maps])
        value = float(roc_auc_score(y, s))
    elif job == "pro_curve + trapezoid":
        fprs, pros = pro_curve(maps, masks)
        value = trapezoid(fprs, pros, x_max=0.3) / 0.3
    else:
        raise ValueError(job)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put((seconds, peak, before, value))


def measure(job: str, data_dir: Path) -> tuple[float, float, float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, str(data_dir), queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def save_inputs(data_dir: Path, small: np.ndarray, masks: list[np.ndarray]) -> None:
    from anobench.metrics import upsample_map

    np.save(data_dir / "small.npy", small)
    for i, (a, m) in enumerate(zip(small, masks)):
        np.save(data_dir / f"mask_{i:04d}.npy", m)
        np.save(data_dir / f"map_{i:04d}.npy", upsample_map(a, m.shape))


def run_suite(title: str, small: np.ndarray, masks: list[np.ndarray], compare: bool, repeat: int = 3) -> None:
    n_pix = sum(m.size for m in masks)
    n_regions = sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)
    n_bad = sum(bool(m.any()) for m in masks)
    print(f"\n== {title}: {len(masks)} images ({n_bad} defective), {n_pix / 1e6:.1f} M pixels, "
          f"{100 * sum(int(m.sum()) for m in masks) / n_pix:.2f} % anomalous in {n_regions} regions; "
          f"maps {small.shape[1]}x{small.shape[2]} upsampled to the mask size")
    jobs = ["upsample_map", "aupro", "pixel_auroc", "pro + pixel_auroc", "all pixel metrics", "evaluate_category"]
    if compare:
        jobs += ["sklearn roc_auc_score", "sklearn average_precision", "pro_curve + trapezoid"]
        if importlib.util.find_spec("anomalib") is not None:
            jobs.append("anomalib AUPRO")
        else:
            print("(anomalib not installed: pip install -e '.[bench]' to compare with its AUPRO)")
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        save_inputs(Path(tmp), small, masks)
        print(f"{'call':<24}{'time s':>9}{'peak RSS MB':>13}{'extra MB':>10}  value")
        for job in jobs:
            seconds, peak, before, value = measure(job, Path(tmp))
            print(f"{job:<24}{seconds:>9.2f}{peak / 1024:>13.0f}{(peak - before) / 1024:>10.0f}  {value:.10f}")
        base, extended = [], []
        for _ in range(repeat):  # alternating, so drift on a shared machine hits both alike
            base.append(measure("pro + pixel_auroc", Path(tmp))[0])
            extended.append(measure("all pixel metrics", Path(tmp))[0])
        ratios = [e / b for b, e in zip(base, extended)]
        print(f"all pixel metrics / (pro + pixel_auroc), {repeat} alternating runs: "
              f"{' '.join(f'{b:.2f}/{e:.2f}s' for b, e in zip(base, extended))}; "
              f"ratio median {float(np.median(ratios)):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


def mvtec_masks(root: Path) -> list[np.ndarray]:
    from PIL import Image

    masks = []
    for img in sorted((root / "test").glob("*/*.png")):
        gt = root / "ground_truth" / img.parent.name / f"{img.stem}_mask.png"
        if img.parent.name == "good":
            w, h = Image.open(img).size
            masks.append(np.zeros((h, w), dtype=bool))
        else:
            masks.append(np.asarray(Image.open(gt)) > 0)
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="number of synthetic images")
    parser.add_argument("--size", type=int, default=1024, help="side of the synthetic masks (ground-truth resolution)")
    parser.add_argument("--model-size", type=int, default=256, help="side of the maps before upsampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mvtec-root", type=Path, help="an MVTec category folder, e.g. /path/to/mvtec_ad/bottle")
    parser.add_argument("--no-compare", action="store_true", help="skip sklearn and the exact-curve reference")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternating runs of 'pro + pixel_auroc' and 'all pixel metrics' for their time ratio")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    masks = list(synthetic_masks(args.n, args.size, rng))
    run_suite("synthetic", model_maps(masks, args.model_size, rng), masks, not args.no_compare, args.repeat)
    if args.mvtec_root is not None:
        masks = mvtec_masks(args.mvtec_root)
        run_suite(f"MVTec {args.mvtec_root.name}", model_maps(masks, args.model_size, rng), masks, not args.no_compare,
                  args.repeat)


if __name__ == "__main__":
    main()
