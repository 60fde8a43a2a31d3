"""The C allocator's settings for a training process (glibc's malloc)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@cache
def retain_freed_memory() -> bool:
    """Keep freed heap memory in the process instead of handing it back to the kernel.

    A training step allocates and frees the same tensors thousands of times. By default
    glibc maps blocks from 128 KiB up afresh and trims the heap's free top, so every step
    faults those pages in again: FADES' update (with 1 MiB pair-grid tensors, before its
    compiled CMI kernel) took some 300–900 page faults and about 15 % of its time in
    them. Blocks up to 32 MiB (glibc's maximum) then come from the heap, which keeps up
    to 256 MiB of free top; the cost is that much more resident memory at most.
    Idempotent; False (and nothing changed) off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 16 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)
