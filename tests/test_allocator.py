"""The training process's allocator settings take (glibc's mallopt accepts every value)."""

from __future__ import annotations

import sys

import pytest

from strategies.allocator import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_every_setting_is_accepted_and_repeating_is_harmless():
    # mallopt answers 0 for a value out of its range (an mmap threshold above 32 MiB,
    # say): the function reports success only if glibc took all three settings.
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True
