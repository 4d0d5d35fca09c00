"""Anomaly maps in the layout MVTec AD's official evaluation script reads, so anyone can re-score a run with it.

    <out>/<category>/test/<defect type>/<image stem>.tiff      float32, at the image's (= ground truth's) resolution

Maps are upsampled exactly as anobench's evaluator upsamples them (`anobench.metrics.upsample_map`), so the
exported files reproduce result.json's pixel metrics. The folder is written beside, then moved into place:
an interrupted export leaves no partial category folder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anobench.data.mvtec import image_size
from anobench.metrics.evaluate import upsample_map

MAPS_DIR = "anomaly_maps"


def map_path(out_dir: Path, category: str, sample: Any) -> Path:
    """Where a test sample's map goes: ``<out>/<category>/test/<defect>/<stem>.tiff``."""
    return Path(out_dir) / category / "test" / sample.defect_type / f"{Path(sample.image_path).stem}.tiff"


def map_at_image_size(anomaly_map: np.ndarray, image_path: str | Path) -> np.ndarray:
    """A model-resolution map upsampled to its image's (= ground truth's) size, as the evaluator upsamples it."""
    width, height = image_size(Path(image_path))
    return upsample_map(anomaly_map, (height, width))


def export_maps(out_dir: str | Path, category: str, samples: Sequence[Any], maps: Sequence[np.ndarray]) -> Path:
    """Write one float32 TIFF per test sample at its image's resolution; returns ``<out>/<category>``.

    An existing ``<out>/<category>`` is replaced as a whole (atomically renamed), never mixed with old maps.
    """
    import tifffile

    if len(samples) != len(maps):
        raise ValueError(f"export_maps: {len(maps)} maps for {len(samples)} test samples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=out_dir))
    try:
        for sample, anomaly_map in zip(samples, maps):
            path = map_path(staging, category, sample)
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, np.ascontiguousarray(map_at_image_size(anomaly_map, sample.image_path),
                                                        dtype=np.float32))
        target = out_dir / category
        if target.exists():
            shutil.rmtree(target)
        (staging / category).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_maps(category_dir: str | Path, samples: Sequence[Any]) -> list[np.ndarray]:
    """The exported maps of `samples`, read back (float32, at each image's resolution)."""
    import tifffile

    return [np.asarray(tifffile.imread(map_path(Path(category_dir).parent, Path(category_dir).name, s)))
            for s in samples]
