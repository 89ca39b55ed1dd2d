"""Process-level tuning that only an application entry point (the CLI) should apply."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above 32 MiB on 64-bit (HEAP_MAX_SIZE / 2).
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS after every batch.

    Transformer inference on the CPU allocates and frees the same large activation buffers
    once per batch; by default glibc serves each from fresh ``mmap`` pages and unmaps them on
    free, so every batch pays millions of page faults. Raising the mmap and trim thresholds
    lets the heap reuse those pages. Measured on the 2-core reference machine with
    all-MiniLM-L6-v2 at batch 16 (640 SciFact abstracts): 18.8 -> 20.2 texts/s, system time
    1.4 s -> 0.1 s. The cost is a resident set that stays at its peak.

    Process-wide, so only the command line calls it; returns False (doing nothing) where
    the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - musl and friends
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    logger.debug("glibc mallopt thresholds raised: %s", ok)
    return ok
