"""Pixel bookkeeping shared by the pixel-level metrics (pixel AU-ROC and AU-PRO).

Both metrics only need two things from a category's maps and masks:

* the scores of all GT-negative pixels, sorted ascending (in a few chunks sorted in parallel), and
* the scores of all GT-positive pixels, each with 1 / (area of its GT region).

Splitting the pixels once into those buffers costs about one copy of the scores and no index
array over all pixels, so a full-resolution category (100 maps of 1024x1024) fits in ~1 GB on top
of the caller's maps; sorting only values (not indices) keeps it fast. Memory touched for the first time
is slow (docs/performance.md#pixel-metrics), so the code avoids temporaries over CPU work.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 3x3 all-ones structuring element = 8-connectivity, exactly as in MVTec's evaluation script.
REGION_STRUCTURE = np.ones((3, 3), dtype=int)


@dataclass(frozen=True)
class PixelSplit:
    """Scores of a category's pixels, split by ground truth.

    neg_chunks:   scores of GT-negative pixels in a few chunks, each sorted ascending (sorted in
                  parallel threads; merging them would cost as much as the sort, and counting needs none).
    pos_scores:   scores of GT-positive pixels, in image order.
    pos_regions:  for each positive pixel, the index of its GT region over all images (int32), or None
                  when regions were not requested.
    region_areas: pixel count of each GT region (int64; empty when regions were not requested).
    """

    neg_chunks: tuple[np.ndarray, ...]
    pos_scores: np.ndarray
    pos_regions: np.ndarray | None
    region_areas: np.ndarray

    @property
    def n_neg(self) -> int:
        return sum(c.size for c in self.neg_chunks)

    @property
    def n_regions(self) -> int:
        """Number of GT connected components over all images (0 when regions were not requested)."""
        return int(self.region_areas.size)

    @property
    def region_weights(self) -> np.ndarray:
        """1 / area of each GT region (float64): a positive pixel's share of its region's PRO."""
        return 1.0 / self.region_areas

    @property
    def pos_weights(self) -> np.ndarray | None:
        """1 / area of the GT region each positive pixel belongs to (float64), or None without regions."""
        return None if self.pos_regions is None else self.region_weights[self.pos_regions]

    def count_neg_below(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per ascending threshold t, the numbers of negatives < t and <= t (int64 each).

        One binary search per chunk and threshold (in threads: numpy searches without the GIL); the
        "<=" count differs only where a negative equals t, which a look at the found position tells, so
        the second search runs for those thresholds only."""
        chunks = self.neg_chunks

        def count(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            below = np.searchsorted(chunk, thresholds, side="left")
            if chunk.size == 0:
                return below, below
            tied = np.flatnonzero(chunk[np.minimum(below, chunk.size - 1)] == thresholds)
            at_or_below = below.copy()
            at_or_below[tied] = np.searchsorted(chunk, thresholds[tied], side="right")
            return below, at_or_below

        with ThreadPoolExecutor(min(len(chunks), available_cpus())) as pool:
            found = list(pool.map(count, chunks))
        below = np.zeros(thresholds.size, dtype=np.int64)
        at_or_below = np.zeros(thresholds.size, dtype=np.int64)
        for lo, hi in found:
            below += lo
            at_or_below += hi
        return below, at_or_below

    @functools.cached_property
    def ranking(self) -> "PositiveRanking":
        """The distinct positive scores with their counts, weights and negatives below (computed once,
        shared by pixel AU-ROC and AU-PRO)."""
        return rank_positives(self)


@dataclass(frozen=True)
class PositiveRanking:
    """Per distinct GT-positive score t (ascending): how many positives have it, the sum of their region
    weights (None without regions), and how many negatives are < t and <= t."""

    thresholds: np.ndarray
    counts: np.ndarray
    weight_sums: np.ndarray | None
    neg_below: np.ndarray
    neg_below_or_equal: np.ndarray


def rank_positives(split: PixelSplit) -> PositiveRanking:
    """Sort the positives once (with their regions when computed) and count the negatives below each.

    float32 scores with regions: one in-place sort of 64-bit keys (order-preserving bits of the score
    high, region index low), from which scores and regions are read back — no index array and no
    gather over the positives, which on this project's machines costs more than the sort itself."""
    scores, regions = split.pos_scores, split.pos_regions
    weights = None
    if regions is None:
        ordered = np.sort(scores)
    elif scores.dtype == np.float32:  # region indices are int32: they fit the low 32 bits
        keys = float32_order_keys(scores).astype(np.uint64)
        keys <<= np.uint64(32)
        keys |= regions.astype(np.uint64)
        keys.sort()
        weights = split.region_weights[(keys & np.uint64(0xFFFFFFFF)).astype(np.intp)]
        keys >>= np.uint64(32)
        ordered = float32_from_order_keys(keys.astype(np.uint32))
        del keys
    else:
        order = np.argsort(scores, kind="stable")
        ordered, weights = scores[order], split.region_weights[regions[order]]
    if ordered.size:
        starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        starts = np.concatenate([[0], starts])
    else:
        starts = np.zeros(0, dtype=np.intp)
    thresholds = ordered[starts]
    counts = np.diff(np.append(starts, ordered.size))
    weight_sums = np.add.reduceat(weights, starts) if weights is not None and starts.size else weights
    return PositiveRanking(thresholds, counts, weight_sums, *split.count_neg_below(thresholds))


def float32_order_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the IEEE order of the float32 scores (-0.0 just below 0.0)."""
    bits = scores.view(np.uint32)
    return np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))


def float32_from_order_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of `float32_order_keys`."""
    bits = np.where(keys >> np.uint32(31), keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.view(np.float32)


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sort_in_chunks(values: np.ndarray, min_chunk: int = 1 << 22) -> tuple[np.ndarray, ...]:
    """Sort `values` in place as up to one chunk per available CPU (threads: numpy sorts without the GIL)."""
    n_chunks = max(1, min(available_cpus(), 8, values.size // min_chunk))
    if n_chunks == 1:
        values.sort()
        return (values,)
    bounds = np.linspace(0, values.size, n_chunks + 1).astype(np.int64)
    chunks = tuple(values[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
    with ThreadPoolExecutor(n_chunks) as pool:
        list(pool.map(np.ndarray.sort, chunks))
    return chunks


def as_bool_mask(mask: np.ndarray) -> np.ndarray:
    """Any non-zero GT pixel is foreground (MVTec masks are 0/255 PNGs)."""
    m = np.asarray(mask)
    return m if m.dtype == bool else m != 0


def check_fpr_limit(fpr_limit: float) -> float:
    """The integration limit must lie in (0, 1], as in MVTec's script."""
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit!r}")
    return limit


def check_pairs(anomaly_maps: Sequence, masks: Sequence) -> tuple[list, list]:
    """Return maps and masks as lists after checking they pair up as 2-D arrays of equal shape."""
    maps, masks = list(anomaly_maps), list(masks)
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} anomaly maps but {len(masks)} masks; they must pair up")
    if not maps:
        raise ValueError("no anomaly maps given")
    for i, (a, m) in enumerate(zip(maps, masks)):
        a_shape, m_shape = np.shape(a), np.shape(m)
        if len(a_shape) != 2:
            raise ValueError(f"anomaly_maps[{i}] must be 2-D, got shape {a_shape}")
        if len(m_shape) != 2:
            raise ValueError(f"masks[{i}] must be 2-D, got shape {m_shape}")
        if a_shape != m_shape:
            raise ValueError(
                f"anomaly_maps[{i}] has shape {a_shape} but masks[{i}] has shape {m_shape}; "
                "they must match (upsample the map to the mask's size first)"
            )
    return maps, masks


def common_score_dtype(maps: Sequence) -> np.dtype:
    """Smallest float dtype holding every map's scores exactly (at least float32).

    Casting float64 maps down to float32 would merge distinct scores into ties and change the
    curves, so the scores keep their precision.
    """
    dtypes = (np.asarray(a).dtype for a in maps)
    return functools.reduce(np.promote_types, dtypes, np.dtype(np.float32))


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pixel_metrics_memory(masks: Sequence[np.ndarray], dtype: np.dtype) -> int:
    """Bytes the pixel metrics allocate for these masks beyond the caller's maps (an upper estimate).

    One copy of every score (negatives sorted in place), plus per positive pixel its region index,
    the sort keys, the sorted scores and weights, and the per-threshold counts (at most
    itemsize + 9 × 8 bytes), plus one full-size map at a time while upsampling, and 10 % slack.
    """
    n_all = sum(int(np.size(m)) for m in masks)
    n_pos = sum(int(np.count_nonzero(m)) for m in masks)
    largest = max((int(np.size(m)) for m in masks), default=0)
    itemsize = np.dtype(dtype).itemsize
    return int(1.1 * (n_all * itemsize + n_pos * (2 * itemsize + 72) + largest * (itemsize + 8)))


def check_memory(masks: Sequence[np.ndarray], dtype: np.dtype, available: int | None = None) -> None:
    """Raise MemoryError, saying how much is needed, when the pixel metrics cannot fit in memory."""
    needed = pixel_metrics_memory(masks, dtype)
    available = available_memory_bytes() if available is None else available
    if available is not None and needed > available:
        n_all = sum(int(np.size(m)) for m in masks)
        raise MemoryError(
            f"pixel metrics for this category need about {needed / 2**30:.1f} GiB ({len(masks)} masks, "
            f"{n_all:,} pixels at {np.dtype(dtype).name}) but only {available / 2**30:.1f} GiB is available; "
            "free memory, or evaluate at model resolution (evaluation.resolution=model, not the official protocol)"
        )


def split_pixels(
    get_map: Callable[[int], np.ndarray],
    masks: Sequence[np.ndarray],
    dtype: np.dtype,
    with_regions: bool,
) -> PixelSplit:
    """Split all pixels of a category into sorted negatives and positives (with their GT regions).

    get_map(i) returns map i (2-D, same shape as masks[i]); it is called once per image, in order,
    so callers can produce maps lazily (e.g. upsample one at a time) instead of holding them all.
    Scores are written straight into the two buffers (np.compress with out=), without temporaries.
    """
    n_pos = [int(np.count_nonzero(m)) for m in masks]
    n_all = sum(int(np.size(m)) for m in masks)
    n_pos_total = sum(n_pos)
    neg = np.empty(n_all - n_pos_total, dtype=dtype)
    pos = np.empty(n_pos_total, dtype=dtype)
    regions = np.empty(n_pos_total, dtype=np.int32) if with_regions else None
    areas: list[np.ndarray] = []
    n_regions = 0
    j_neg = j_pos = 0
    for i, mask in enumerate(masks):
        m = as_bool_mask(mask)
        a = np.asarray(get_map(i))
        if a.shape != m.shape:
            raise ValueError(f"anomaly_maps[{i}] has shape {a.shape} but masks[{i}] has shape {m.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"anomaly_maps[{i}] contains NaN or infinite scores")
        k = n_pos[i]
        if k == 0:  # good image: every pixel is negative
            neg[j_neg : j_neg + a.size] = a.ravel()
            j_neg += a.size
            continue
        flat, fg = a.ravel(), m.ravel()
        np.compress(~fg, flat, out=neg[j_neg : j_neg + a.size - k])
        np.compress(fg, flat, out=pos[j_pos : j_pos + k])
        if with_regions:
            labeled, n_comp = ndimage.label(m, structure=REGION_STRUCTURE)
            labeled = labeled.ravel()
            # labels 1..n_comp → global region indices n_regions .. n_regions + n_comp − 1
            np.compress(fg, labeled, out=regions[j_pos : j_pos + k])
            regions[j_pos : j_pos + k] += n_regions - 1
            areas.append(np.bincount(labeled, minlength=n_comp + 1)[1:])
            n_regions += n_comp
        j_neg += a.size - k
        j_pos += k
    region_areas = np.concatenate(areas).astype(np.int64) if areas else np.zeros(0, dtype=np.int64)
    return PixelSplit(neg_chunks=sort_in_chunks(neg), pos_scores=pos, pos_regions=regions, region_areas=region_areas)


def warn_undefined(what: str, why: str) -> float:
    """Emit the reason a metric is undefined and return NaN (metrics never raise for this)."""
    warnings.warn(f"{what} is undefined ({why}); returning nan", RuntimeWarning, stacklevel=3)
    return float("nan")
