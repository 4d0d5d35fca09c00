"""From an anomaly map to one image score: the candidate poolings, defined once and scale-free.

Where a paper defines no image score (Uninformed Students, SynthCP's MVTec adaptation, NBS), the method
pools its map with the one rule `anobench.protocol.MAP_POOLING`; every result also records the image AUROC
of each candidate pooling of every method's map (``evaluation.image_auroc_by_pooling``), which is how that
rule was chosen and how it can be re-checked (docs/methods.md, "Image scores from maps").

Every candidate is defined relative to the map's size, so a 128-px and a 256-px map of the same image
pool alike:

- ``max``: the largest value.
- ``smoothed_max``: the largest value after a Gaussian blur of σ = side / 64 (4 px at 256 px): one
  spurious hot pixel no longer decides, a defect-sized blob still does.
- ``top1_mean`` / ``top5_mean``: the mean of the largest 1 % / 5 % of the values.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

POOLINGS = ("max", "smoothed_max", "top1_mean", "top5_mean")
SMOOTHING_SIDE_FRACTION = 1 / 64  # σ of smoothed_max, as a fraction of the map's shorter side
TOP_FRACTIONS = {"top1_mean": 0.01, "top5_mean": 0.05}
# The one rule for methods whose paper defines no image score (chosen by scripts/map_pooling.py over runs
# that span methods, categories and seeds; docs/methods.md, "Image scores from maps").
MAP_POOLING = "top1_mean"


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of B×H×W maps (kernel radius ⌈3σ⌉, reflect padding); σ ≤ 0: unchanged."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    if radius >= min(maps.shape[-2:]):
        radius = min(maps.shape[-2:]) - 1
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def top_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the largest `fraction` of each B×H×W map's values (at least one value: fraction 0 = max)."""
    flat = maps.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    return flat.amax(dim=1) if k == 1 else flat.topk(k, dim=1).values.mean(dim=1)


def pool_maps(maps: torch.Tensor, rule: str) -> torch.Tensor:
    """B×H×W maps → B image scores by `rule` (one of `POOLINGS`)."""
    if rule not in POOLINGS:
        raise ValueError(f"map pooling {rule!r} is not one of {', '.join(POOLINGS)}")
    if maps.ndim != 3:
        raise ValueError(f"maps must be B×H×W, got shape {tuple(maps.shape)}")
    if rule == "max":
        return maps.flatten(1).amax(dim=1)
    if rule == "smoothed_max":
        sigma = min(maps.shape[-2:]) * SMOOTHING_SIDE_FRACTION
        return gaussian_blur(maps, sigma).flatten(1).amax(dim=1)
    return top_mean(maps, TOP_FRACTIONS[rule])


def pool_all(maps: list[np.ndarray] | tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """Every candidate pooling of a list of 2-D maps (any sizes), as float64 arrays of one score per map."""
    scores: dict[str, list[float]] = {rule: [] for rule in POOLINGS}
    with torch.no_grad():
        for a in maps:
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
            for rule in POOLINGS:
                scores[rule].append(float(pool_maps(t, rule)[0]))
    return {rule: np.asarray(values, dtype=np.float64) for rule, values in scores.items()}
