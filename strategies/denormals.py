"""Denormal floats flushed to zero while a method that opts in trains (`Method.flush_denormals`).

A hidden unit that stops receiving gradient (a ReLU that no longer fires for any row)
leaves Adam's first moment of its weights decaying by β₁ = 0.9 a step: from ~1e-4 to
float32's smallest normal number (1.2e-38) in some 750 steps, then some 150 steps
through the denormal range, where each multiply takes a microcode assist many times
slower than a normal one. Thousands of such weights ride along in every Adam pass. On
a tenth of Table 2's rows (synthetic mammoclip features) this took 20–27% of DANN's
training time, stacked search and per-config run alike, and ~10% of FairDisCO's stacked
search. Benchmarks on random features and fresh weights never reach the denormal range,
so they hid it.

Flushed (x86 FTZ and DAZ: results and inputs below 1.2e-38 read as zero), such a
moment becomes 0 as soon as it leaves the normal range; the update it contributed, at
most lr · 1e-38 / ε with Adam's ε = 1e-8, was already far below any weight's rounding
(DANN's per-config weights after 15 epochs came out bit-identical either way). Methods
opt in rather than every method flushing: where a method takes the logarithm of a
probability or weight that may vanish (GroupDRO's per-config adversary takes
``log(q)``), flushing would turn a very negative number into −inf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (FTZ/DAZ)."""
    return bool(np.float32(1e-39) * np.float32(1.0) == 0.0)


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormals to zero in this thread inside the block when ``enabled``; restore the mode after.

    torch's and numba's kernels run in the calling thread here (training runs on one
    thread per process), so the mode covers them all. A no-op where the CPU has no such
    mode or it is already on.
    """
    if not enabled or denormals_flushed():
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
