"""recon.heap: freed memory is kept between blocks up to the trim threshold, and returned above it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from recon import heap

# Runs in a fresh interpreter (the heap is per process, and pytest's holds whatever earlier tests
# freed): prints how much of a block freed inside reuse_freed_memory() is still resident after it.
MEASURE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from recon.heap import reuse_freed_memory

    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    size = int(sys.argv[1])
    before = resident()
    with reuse_freed_memory():
        block = np.ones(size // 8)
        del block
    print((resident() - before) / size)
""")


def _resident_fraction_after(num_bytes: int) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(num_bytes)], capture_output=True, text=True, check=True)
    return float(out.stdout)


needs_mallinfo2 = pytest.mark.skipif(
    heap._glibc() is None or heap._free_heap_bytes(heap._glibc()) is None,
    reason="needs glibc >= 2.33 (mallinfo2); other C libraries are left alone by recon.heap")


@needs_mallinfo2
def test_a_block_below_the_threshold_stays_resident_for_the_next_call():
    """16 MiB freed in a block stays mapped, so the next block reuses it without page faults (a
    bundle adjustment of BAL 49-1800 frees ~20 MiB; faulting it in again was ~10% of a solve)."""
    assert _resident_fraction_after(16 << 20) > 0.9


@needs_mallinfo2
def test_a_block_above_the_threshold_is_returned_to_the_kernel():
    assert _resident_fraction_after(4 * heap.KEEP_FREE_BYTES) < 0.1
