"""Seeded synthetic anomaly-detection categories written in the exact MVTec AD layout.

Why: tests, CI and quick sweeps need a dataset that exists everywhere, is small, is identical
for a given seed (byte for byte), and exercises the same code paths as MVTec AD. The four
categories mimic MVTec's split into textures (``weave``, ``granite``) and objects (``washer``,
``tablet``). Normal images vary (noise, shifts, small rotations, colour/brightness jitter) and
defects are soft-edged alterations in the normal intensity range, so the task is learnable but
not trivially separable by a global statistic.

Layout written (``<root>/<category>/``)::

    train/good/000.png ...
    test/good/000.png ...
    test/<defect>/000.png ...
    ground_truth/<defect>/000_mask.png ...   (mode L, 0 = normal, 255 = defect)
    .anobench_synthetic.json                 (manifest: generator version, seed, params)

Every defective image is rendered from a normal image; its mask is exactly the set of pixels
whose 8-bit value differs from that normal image (alterations smaller than a threshold are
reverted, so no unmarked pixel is changed).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from anobench.errors import DataError

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DEFECTS",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "generate_category",
    "ensure_synthetic",
    "render_sample",
]

GENERATOR_VERSION = 1
MANIFEST_NAME = ".anobench_synthetic.json"

SYNTHETIC_CATEGORIES: dict[str, str] = {
    "weave": "texture",
    "granite": "texture",
    "washer": "object",
    "tablet": "object",
}

SYNTHETIC_DEFECTS: dict[str, tuple[str, ...]] = {
    "weave": ("deformation", "hole", "scratch", "stain"),
    "granite": ("crack", "hole", "scratch", "stain"),
    "washer": ("crack", "deformation", "hole", "scratch"),
    "tablet": ("crack", "deformation", "scratch", "stain"),
}

# A pixel counts as altered when one of its 8-bit channels moved by at least this much.
_ALTER_THRESHOLD = 10


# --------------------------------------------------------------------------------------------
# normal images
# --------------------------------------------------------------------------------------------
@dataclass
class _Scene:
    """A rendered normal image plus what defects need to know about it."""

    image: np.ndarray  # H×W×3 float in [0, 1]
    background: np.ndarray | None  # objects: the image without the object (for holes)
    object_alpha: np.ndarray | None  # objects: soft coverage of the object
    dark: np.ndarray  # textures: colour of the backing seen through a hole
    edge_points: np.ndarray | None  # objects: (N, 2) y, x points on the outer edge
    scale: float


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian noise blurred by sigma and normalised to unit std (a stochastic field)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _illumination(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Slow brightness variation (uneven lighting) around 1."""
    yy, xx = _grid(size)
    gy, gx = rng.normal(0.0, strength, 2)
    ramp = 1.0 + gy * (yy / size - 0.5) + gx * (xx / size - 0.5)
    coarse = rng.standard_normal((6, 6))
    low = ndimage.zoom(coarse, size / 6, order=3, mode="nearest", grid_mode=True)[:size, :size]
    return ramp * (1.0 + strength * 0.5 * low / (coarse.std() + 1e-8))


def _colour(rng: np.random.Generator, base: tuple[float, float, float], jitter: float) -> np.ndarray:
    return np.clip(np.asarray(base) * (1.0 + rng.normal(0.0, jitter, 3)), 0.0, 1.0)


def _weave(rng: np.random.Generator, size: int) -> _Scene:
    """Plain weave: alternating over/under threads with fibre noise and uneven lighting."""
    s = size / 256
    yy, xx = _grid(size)
    period = rng.uniform(15.0, 17.0) * s
    theta = np.deg2rad(rng.normal(0.0, 1.5))
    off = rng.uniform(0.0, 2 * period, 2)
    c, sn = np.cos(theta), np.sin(theta)
    u = ((xx - size / 2) * c + (yy - size / 2) * sn + off[0]) / period
    v = (-(xx - size / 2) * sn + (yy - size / 2) * c + off[1]) / period
    fu, fv = u - np.floor(u), v - np.floor(v)
    top_h = (np.floor(u) + np.floor(v)) % 2 == 0
    prof_h = np.sqrt(np.sin(np.pi * fv)) * (0.78 + 0.22 * np.sin(np.pi * fu))
    prof_v = np.sqrt(np.sin(np.pi * fu)) * (0.78 + 0.22 * np.sin(np.pi * fv))
    fibre = ndimage.gaussian_filter(rng.standard_normal((size, size)), (0.6 * s, 2.0 * s))
    fibre_v = ndimage.gaussian_filter(rng.standard_normal((size, size)), (2.0 * s, 0.6 * s))
    fibre, fibre_v = fibre / fibre.std(), fibre_v / fibre_v.std()
    value = np.where(top_h, prof_h + 0.07 * fibre, prof_v + 0.07 * fibre_v)
    value = 0.3 + 0.62 * np.clip(value, 0.0, 1.1)
    warp_c = _colour(rng, (0.72, 0.60, 0.44), 0.04)
    weft_c = warp_c * _colour(rng, (0.93, 0.95, 0.98), 0.02)
    colour = np.where(top_h[..., None], warp_c, weft_c)
    img = value[..., None] * colour * _illumination(rng, size, 0.08)[..., None]
    img *= rng.uniform(0.92, 1.08)
    img += rng.normal(0.0, 0.015, img.shape)
    dark = warp_c * 0.42
    return _Scene(np.clip(img, 0, 1), None, None, dark, None, s)


def _granite(rng: np.random.Generator, size: int) -> _Scene:
    """Stochastic stone: multi-scale grain with dark and light blotches."""
    s = size / 256
    fine = _smooth_noise(rng, size, 0.8 * s)
    mid = _smooth_noise(rng, size, 3.0 * s)
    coarse = _smooth_noise(rng, size, 10.0 * s)
    light_f = _smooth_noise(rng, size, 2.0 * s)
    base_c = _colour(rng, (0.60, 0.57, 0.54), 0.04)
    dark_c = _colour(rng, (0.26, 0.25, 0.27), 0.05)
    light_c = _colour(rng, (0.86, 0.83, 0.79), 0.03)
    img = base_c * (1.0 + 0.07 * fine + 0.05 * coarse)[..., None]
    a_dark = 1.0 / (1.0 + np.exp(-((mid + 0.3 * fine) - 1.25) / 0.12))
    a_light = 1.0 / (1.0 + np.exp(-((light_f + 0.3 * fine) - 1.55) / 0.12))
    img = img * (1 - a_dark[..., None]) + dark_c * (1.0 + 0.08 * fine[..., None]) * a_dark[..., None]
    img = img * (1 - a_light[..., None]) + light_c * a_light[..., None]
    img *= _illumination(rng, size, 0.06)[..., None] * rng.uniform(0.93, 1.07)
    img += rng.normal(0.0, 0.012, img.shape)
    return _Scene(np.clip(img, 0, 1), None, None, dark_c * 0.95, None, s)


def _background(rng: np.random.Generator, size: int, base: tuple[float, float, float]) -> np.ndarray:
    bg = _colour(rng, base, 0.04) * _illumination(rng, size, 0.10)[..., None]
    return np.clip(bg + rng.normal(0.0, 0.01, (size, size, 3)), 0, 1)


def _washer(rng: np.random.Generator, size: int) -> _Scene:
    """A machined metal ring, roughly centred, lit from a random-ish side."""
    s = size / 256
    yy, xx = _grid(size)
    bg = _background(rng, size, (0.20, 0.21, 0.23))
    cy, cx = size / 2 + rng.normal(0.0, 0.015 * size, 2)
    outer = 0.36 * size * rng.uniform(0.97, 1.03)
    inner = outer * rng.uniform(0.45, 0.50)
    d = np.hypot(yy - cy, xx - cx)
    phi = np.arctan2(yy - cy, xx - cx)
    alpha = np.clip(outer - d + 0.5, 0, 1) * np.clip(d - inner + 0.5, 0, 1)
    mid_r, half_w = (outer + inner) / 2, (outer - inner) / 2
    light = rng.normal(-2.3, 0.25)
    metal = (
        0.62
        + 0.12 * np.cos(phi - light)
        + 0.05 * np.cos(2 * (phi - light))
        - 0.18 * ((d - mid_r) / half_w) ** 2
        + 0.025 * np.sin(2 * np.pi * d / (3.1 * s))
    )
    brushed = ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.7 * s)
    metal = metal * rng.uniform(0.92, 1.08) + 0.05 * brushed
    obj = metal[..., None] * _colour(rng, (1.0, 0.98, 0.95), 0.02)
    obj = np.clip(obj + rng.normal(0.0, 0.01, obj.shape), 0, 1)
    # soft drop shadow on the background
    shadow = ndimage.gaussian_filter(alpha, 4 * s)
    shadow = ndimage.shift(shadow, (3 * s, 3 * s), order=1, mode="nearest")
    bg = bg * (1.0 - 0.35 * shadow[..., None])
    img = bg * (1 - alpha[..., None]) + obj * alpha[..., None]
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    edge = np.stack([cy + (outer - 2 * s) * np.sin(angles), cx + (outer - 2 * s) * np.cos(angles)], 1)
    return _Scene(np.clip(img, 0, 1), bg, alpha, bg.mean((0, 1)), edge, s)


def _tablet(rng: np.random.Generator, size: int) -> _Scene:
    """A rounded oblong pill with a score line and a few natural specks."""
    s = size / 256
    yy, xx = _grid(size)
    bg = _background(rng, size, (0.24, 0.27, 0.31))
    cy, cx = size / 2 + rng.normal(0.0, 0.015 * size, 2)
    theta = np.deg2rad(rng.normal(0.0, 4.0))
    a, b = 0.38 * size * rng.uniform(0.97, 1.03), 0.21 * size * rng.uniform(0.96, 1.04)
    c, sn = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * sn
    v = -(xx - cx) * sn + (yy - cy) * c
    p = 2.6
    r = ((np.abs(u) / a) ** p + (np.abs(v) / b) ** p) ** (1 / p)
    alpha = np.clip((1.0 - r) * b / 1.0 + 0.5, 0, 1)
    shade = 0.95 - 0.20 * r**2 + 0.06 * (-u / a - v / b) / 2
    score = 1.0 - 0.22 * np.exp(-((u / (1.3 * s)) ** 2)) * (np.abs(v) < 0.8 * b)
    body = _colour(rng, (0.90, 0.87, 0.80), 0.025) * (shade * score)[..., None]
    body *= rng.uniform(0.94, 1.04)
    # specks: small soft reddish-brown dots that normal tablets carry
    specks = np.zeros((size, size))
    for _ in range(rng.integers(8, 22)):
        su, sv = rng.uniform(-0.85, 0.85) * a, rng.uniform(-0.8, 0.8) * b
        py, px = cy + su * sn + sv * c, cx + su * c - sv * sn
        rad = rng.uniform(0.7, 1.6) * s
        y0, y1 = max(int(py - 5 * rad), 0), min(int(py + 5 * rad) + 2, size)
        x0, x1 = max(int(px - 5 * rad), 0), min(int(px + 5 * rad) + 2, size)
        win = np.exp(-((yy[y0:y1, x0:x1] - py) ** 2 + (xx[y0:y1, x0:x1] - px) ** 2) / (2 * rad**2))
        specks[y0:y1, x0:x1] = np.maximum(specks[y0:y1, x0:x1], win)
    speck_c = _colour(rng, (0.72, 0.52, 0.44), 0.05)
    body = body * (1 - 0.8 * specks[..., None]) + speck_c * 0.8 * specks[..., None]
    body = np.clip(body + rng.normal(0.0, 0.01, body.shape), 0, 1)
    shadow = ndimage.shift(ndimage.gaussian_filter(alpha, 5 * s), (3 * s, 2 * s), order=1, mode="nearest")
    bg = bg * (1.0 - 0.35 * shadow[..., None])
    img = bg * (1 - alpha[..., None]) + body * alpha[..., None]
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    eu, ev = (a - 2 * s) * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2 / p), (b - 2 * s) * np.sign(
        np.sin(t)
    ) * np.abs(np.sin(t)) ** (2 / p)
    edge = np.stack([cy + eu * sn + ev * c, cx + eu * c - ev * sn], 1)
    return _Scene(np.clip(img, 0, 1), bg, alpha, bg.mean((0, 1)), edge, s)


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "weave": _weave,
    "granite": _granite,
    "washer": _washer,
    "tablet": _tablet,
}


# --------------------------------------------------------------------------------------------
# defects
# --------------------------------------------------------------------------------------------
def _defect_centre(rng: np.random.Generator, scene: _Scene, size: int) -> tuple[float, float]:
    if scene.object_alpha is None:
        return tuple(rng.uniform(0.18 * size, 0.82 * size, 2))  # type: ignore[return-value]
    solid = scene.object_alpha > 0.99
    inside = np.flatnonzero(ndimage.binary_erosion(solid, iterations=max(1, int(6 * scene.scale))))
    if len(inside) == 0:
        inside = np.flatnonzero(solid)
    k = inside[rng.integers(len(inside))]
    return float(k // size), float(k % size)


def _blob(rng: np.random.Generator, size: int, centre: tuple[float, float], radius: float, soft: float) -> np.ndarray:
    """An irregular soft blob (alpha in [0, 1]) around centre."""
    yy, xx = _grid(size)
    ang = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.5, 1.0)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / aspect
    d = np.hypot(u, v) / radius
    wobble = _smooth_noise(rng, size, max(radius / 2.5, 1.0))
    alpha = np.clip((1.0 - d + 0.25 * wobble) * radius / max(soft, 0.5), 0, 1)
    return ndimage.gaussian_filter(alpha, max(soft / 2, 0.5))


def _stroke(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Soft alpha of a thin curve through dense points (y, x)."""
    canvas = np.ones((size, size), dtype=bool)
    pts = np.round(points).astype(int)
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < size) & (pts[:, 1] >= 0) & (pts[:, 1] < size)
    pts = pts[ok]
    if len(pts) == 0:
        return np.zeros((size, size))
    canvas[pts[:, 0], pts[:, 1]] = False
    dist = ndimage.distance_transform_edt(canvas)
    return ndimage.gaussian_filter(np.clip(1.0 - dist / width, 0, 1), 0.5)


def _restrict(alpha: np.ndarray, scene: _Scene) -> np.ndarray:
    return alpha if scene.object_alpha is None else alpha * scene.object_alpha


def _scratch(rng: np.random.Generator, scene: _Scene, img: np.ndarray) -> np.ndarray:
    size, s = img.shape[0], scene.scale
    cy, cx = _defect_centre(rng, scene, size)
    length = rng.uniform(25, 75) * s
    ang = rng.uniform(0, np.pi)
    d = np.array([np.sin(ang), np.cos(ang)])
    n = np.array([-d[1], d[0]])
    t = np.linspace(-0.5, 0.5, int(length * 3) + 2)[:, None]
    bend = rng.uniform(-0.25, 0.25) * length
    pts = np.array([cy, cx]) + t * length * d + (1 - 4 * t**2) * bend * n
    alpha = _restrict(_stroke(size, pts, rng.uniform(1.0, 2.2) * s), scene)
    k = rng.choice([-1.0, 1.0]) * rng.uniform(0.18, 0.40)
    return img * (1.0 + k * alpha[..., None])


def _crack(rng: np.random.Generator, scene: _Scene, img: np.ndarray) -> np.ndarray:
    size, s = img.shape[0], scene.scale
    start = np.array(_defect_centre(rng, scene, size))
    pts = []
    for _branch in range(rng.integers(1, 3)):
        p, ang = start.copy(), rng.uniform(0, 2 * np.pi)
        for _ in range(rng.integers(6, 14)):
            ang += rng.normal(0.0, 0.6)
            step = rng.uniform(3, 6) * s
            q = p + step * np.array([np.sin(ang), np.cos(ang)])
            pts.append(p + np.linspace(0, 1, int(step * 3) + 2)[:, None] * (q - p))
            p = q
    alpha = _restrict(_stroke(size, np.concatenate(pts), rng.uniform(0.9, 1.6) * s), scene)
    return img * (1.0 - rng.uniform(0.35, 0.6) * alpha[..., None])


def _hole(rng: np.random.Generator, scene: _Scene, img: np.ndarray) -> np.ndarray:
    size, s = img.shape[0], scene.scale
    alpha = _blob(rng, size, _defect_centre(rng, scene, size), rng.uniform(6, 16) * s, 1.5 * s)
    if scene.background is not None:
        fill = scene.background  # missing material: the background shows through
        alpha = _restrict(alpha, scene)
    else:
        fill = scene.dark * (1.0 + 0.25 * _smooth_noise(rng, size, 1.5 * s))[..., None]
    return img * (1 - alpha[..., None]) + fill * alpha[..., None]


def _stain(rng: np.random.Generator, scene: _Scene, img: np.ndarray) -> np.ndarray:
    size, s = img.shape[0], scene.scale
    alpha = _blob(rng, size, _defect_centre(rng, scene, size), rng.uniform(7, 20) * s, rng.uniform(3, 6) * s)
    alpha = _restrict(alpha, scene)
    tint = rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.3) + rng.normal(0.0, 0.05, 3)
    return img * (1.0 + tint * alpha[..., None])


def _deformation(rng: np.random.Generator, scene: _Scene, img: np.ndarray) -> np.ndarray:
    size, s = img.shape[0], scene.scale
    if scene.edge_points is not None:
        cy, cx = scene.edge_points[rng.integers(len(scene.edge_points))]
    else:
        cy, cx = _defect_centre(rng, scene, size)
    yy, xx = _grid(size)
    sigma = rng.uniform(6, 14) * s
    amp = rng.uniform(3.5, 7.0) * s
    dy, dx = yy - cy, xx - cx
    g = np.exp(-(dy**2 + dx**2) / (2 * sigma**2))
    if rng.random() < 0.5:  # swirl
        ang = amp / sigma * g
        sy = cy + dy * np.cos(ang) - dx * np.sin(ang)
        sx = cx + dy * np.sin(ang) + dx * np.cos(ang)
    else:  # push in or out
        r = np.hypot(dy, dx) + 1e-6
        sign = rng.choice([-1.0, 1.0])
        sy, sx = yy - sign * amp * g * dy / r, xx - sign * amp * g * dx / r
    out = np.empty_like(img)
    for ch in range(3):
        out[..., ch] = ndimage.map_coordinates(img[..., ch], [sy, sx], order=1, mode="reflect")
    return out


_DEFECTS: dict[str, Callable[[np.random.Generator, _Scene, np.ndarray], np.ndarray]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "deformation": _deformation,
}


# --------------------------------------------------------------------------------------------
# rendering one sample
# --------------------------------------------------------------------------------------------
def _check_category(category: str) -> None:
    if category not in SYNTHETIC_CATEGORIES:
        raise DataError(
            f"unknown synthetic category '{category}'; expected one of: {', '.join(SYNTHETIC_CATEGORIES)}"
        )


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_sample(
    category: str, seed: int, split: str, index: int, image_size: int = 256
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Render one sample: (image uint8 H×W×3, mask bool H×W or None, the normal image it came from).

    ``split`` is ``"train"``, ``"good"`` (test good) or a defect name. Each sample has its own
    random stream (seed, category, split, index), so samples are reproducible independently of
    how many others are generated.
    """
    _check_category(category)
    if split not in ("train", "good") and split not in SYNTHETIC_DEFECTS[category]:
        raise DataError(
            f"unknown split '{split}' for synthetic category '{category}'; expected train, good or one of: "
            f"{', '.join(SYNTHETIC_DEFECTS[category])}"
        )
    if image_size < 32:
        raise DataError(f"synthetic image_size={image_size} is too small; expected at least 32")
    key = [int(seed) & 0xFFFFFFFF, zlib.crc32(category.encode()), zlib.crc32(split.encode()), int(index)]
    rng = np.random.default_rng(key)
    scene = _RENDERERS[category](rng, image_size)
    normal = _to_uint8(scene.image)
    if split in ("train", "good"):
        return normal, None, normal
    min_area = 20 * scene.scale**2
    # keep altered colours inside this image's own normal range (per channel)
    lo, hi = np.percentile(scene.image.reshape(-1, 3), [0.5, 99.5], axis=0)
    for _attempt in range(50):
        altered_f = _DEFECTS[split](rng, scene, scene.image)
        altered_f = np.where(altered_f != scene.image, np.clip(altered_f, lo, hi), altered_f)
        altered = _to_uint8(altered_f)
        diff = np.abs(altered.astype(np.int16) - normal.astype(np.int16)).max(axis=2)
        mask = diff >= _ALTER_THRESHOLD
        if mask.sum() >= min_area:
            # close pin-holes so the region is contiguous, then revert every change outside it:
            # each changed pixel is inside the mask and the mask is the thresholded alteration
            mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2) | mask)
            image = np.where(mask[..., None], altered, normal)
            return image, mask, normal
    raise DataError(  # pragma: no cover - would be a generator bug
        f"synthetic generator could not place a visible '{split}' defect in {category} sample {index}"
    )


# --------------------------------------------------------------------------------------------
# writing a category atomically
# --------------------------------------------------------------------------------------------
def _params(category: str, seed: int, image_size: int, n_train: int, n_test_good: int, n_test_per_defect: int) -> dict[str, Any]:
    for key, value, low in (
        ("image_size", image_size, 32),
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_per_defect", n_test_per_defect, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise DataError(f"synthetic parameter {key}={value!r} is invalid; expected an integer >= {low}")
    return {
        "generator": "anobench.data.synthetic",
        "version": GENERATOR_VERSION,
        "category": category,
        "seed": int(seed),
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "defects": list(SYNTHETIC_DEFECTS[category]),
    }


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=1)


def _write_tree(dest: Path, params: dict[str, Any]) -> None:
    """Write every file of a category into dest (which must not exist yet); manifest last."""
    category, seed, size = params["category"], params["seed"], params["image_size"]
    (dest / "train" / "good").mkdir(parents=True)
    (dest / "test" / "good").mkdir(parents=True)
    for i in range(params["n_train"]):
        image, _, _ = render_sample(category, seed, "train", i, size)
        _save_png(image, dest / "train" / "good" / f"{i:03d}.png")
    for i in range(params["n_test_good"]):
        image, _, _ = render_sample(category, seed, "good", i, size)
        _save_png(image, dest / "test" / "good" / f"{i:03d}.png")
    for defect in params["defects"]:
        (dest / "test" / defect).mkdir(parents=True)
        (dest / "ground_truth" / defect).mkdir(parents=True)
        for i in range(params["n_test_per_defect"]):
            image, mask, _ = render_sample(category, seed, defect, i, size)
            assert mask is not None
            _save_png(image, dest / "test" / defect / f"{i:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, dest / "ground_truth" / defect / f"{i:03d}_mask.png")
    (dest / MANIFEST_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _publish(tmp: Path, target: Path, params: dict[str, Any]) -> Path:
    """Move a finished tmp folder into place; readers never see a half-written target.

    If another process published an identical category first, keep theirs and drop ours.
    An outdated target (different manifest) is moved aside and deleted.
    """
    try:
        for _attempt in range(5):
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if not target.exists():
                    continue  # it vanished between our checks (another process swapping): retry
                if _read_manifest(target) == params:
                    return target  # lost the race to an identical result: accept theirs
                if _read_manifest(target) is None and (target / "train").exists():
                    raise DataError(
                        f"{target} exists but has no {MANIFEST_NAME}, so it was not written by the synthetic "
                        "generator; refusing to replace it. Remove it or choose another data.root."
                    ) from None
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(target, old)
                except OSError:
                    continue  # someone else moved it: retry
                shutil.rmtree(old, ignore_errors=True)
        raise DataError(f"could not move the generated synthetic data {tmp} into place at {target}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generate_category(
    root: str | Path,
    category: str,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_per_defect: int = 6,
) -> Path:
    """(Re)generate ``<root>/<category>`` in MVTec layout and return that folder.

    Files are written to a hidden temporary sibling and renamed into place, so the folder is
    either absent, the previous complete version, or the new complete version.
    """
    _check_category(category)
    params = _params(category, seed, image_size, n_train, n_test_good, n_test_per_defect)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    target = root / category
    tmp = root / f".{category}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_tree(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, target, params)


def ensure_synthetic(root: str | Path, category: str, seed: int = 0, **kwargs: Any) -> Path:
    """Return ``<root>/<category>``, generating it only if absent or made with other parameters.

    The check is the manifest (generator version, seed and sizes), so repeated and concurrent
    calls (parallel sweeps) are cheap and safe. ``kwargs`` are ``generate_category``'s
    image_size, n_train, n_test_good and n_test_per_defect.
    """
    _check_category(category)
    allowed = {"image_size", "n_train", "n_test_good", "n_test_per_defect"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise DataError(
            f"unknown synthetic parameter(s) {', '.join(unknown)}; expected seed or one of: {', '.join(sorted(allowed))}"
        )
    defaults = {"image_size": 256, "n_train": 40, "n_test_good": 10, "n_test_per_defect": 6}
    merged = {**defaults, **kwargs}
    params = _params(category, seed, **merged)
    target = Path(root).expanduser() / category
    if target.is_dir() and _read_manifest(target) == params:
        return target
    return generate_category(root, category, seed=seed, **merged)
