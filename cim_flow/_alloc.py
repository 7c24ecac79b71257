"""glibc malloc settings for a process that makes big, short-lived query answers.

A batch of queries answers with arrays of a few MB (10k radius queries at ~30 hits: 12 MB
of table columns; 10k x 30 nearest neighbours: two 2.4 MB arrays). glibc serves
allocations over its mmap threshold (128 KB at first, then raised as such blocks are
freed, up to 32 MB) with fresh ``mmap`` memory, and gives memory at the top of its heap
back to the system past a trim threshold. Which one a given answer got depended on what
the process had freed before it: in one order of calls the kNN table faulted 1,566 fresh
4 KiB pages each call (53 ms against 40 ms without), in another the radius table 2,610
(24-42 ms against 15-18 ms). Fixing both thresholds keeps freed answer memory for the
next answer.

This is process-wide, so the library never does it on its own: the service calls
:func:`tune_allocator` at start; an embedding application may call it too
(``cim_flow.tune_allocator()``). The cost is resident memory: up to ``trim_threshold``
of freed heap stays with the process.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV_KEYS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: tuple[int, int] | None = None


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Fix glibc's mmap threshold (blocks below it come from the heap and are reused once
    freed) and trim threshold (free heap kept before any is given back). True when set;
    False, changing nothing, on a C library without ``mallopt`` (not glibc), when the
    environment already sets malloc tunables (the user's choice stands), or with
    ``CIM_FLOW_TUNE_MALLOC=0``."""
    global _applied
    if os.environ.get("CIM_FLOW_TUNE_MALLOC", "1") == "0" or any(k in os.environ for k in _ENV_KEYS):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) != 1:
        return False
    if mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) != 1:
        return False
    _applied = (int(mmap_threshold), int(trim_threshold))
    return True


def allocator_settings() -> tuple[int, int] | None:
    """``(mmap_threshold, trim_threshold)`` as set by :func:`tune_allocator`, or None."""
    return _applied
