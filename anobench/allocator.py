"""Keep freed memory inside the process (glibc malloc), for CPU speed: same numbers, fewer page faults.

glibc's malloc serves blocks above a (dynamic) threshold with fresh mmap()s and hands freed memory at
the top of the heap back to the OS, so a training step that allocates and frees the same activations
every time page-faults them in again. Raising the mmap threshold to its maximum (32 MiB) and the trim
threshold to 1 GiB keeps those blocks for reuse; the peak memory is unchanged, only the memory between
steps stays mapped. Measurements: docs/performance.md#allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**30

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True if in effect (False off glibc/Linux)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and others have no mallopt
                return False
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
    return _applied
