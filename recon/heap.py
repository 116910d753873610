"""Keep large freed allocations in glibc's heap instead of returning them to the kernel.

recon's hot loops allocate and free the same multi-megabyte temporaries over and over (the NN
matcher's similarity matrix per pair, the bundle adjuster's gathered Jacobian rows per LM
iteration). glibc serves an allocation above its mmap threshold (dynamic, at most 32 MiB on
64-bit) with a new ``mmap`` and unmaps it on ``free``, so the kernel page-faults every 4 KiB page
in again on each use. ``benchmarks/heap_reuse.py`` measures it A/B in fresh processes: bundle
adjustment of BAL ``problem-49-7776`` (20 LM iterations) and one 8k x 8k SIFT-sized
nearest-neighbour match were 1.1-1.5x faster with reuse on an idle 2-core machine (three runs,
one and two threads) and 2.0x / 1.7x with one thread on a loaded one, where page faults cost
more. Peak RSS is unchanged: the same blocks are reused, not added to.

:func:`reuse_freed_memory` raises the thresholds for the duration of a block (the CLI wraps every
command in it; :func:`recon.ba.solve` and :func:`recon.match.match_pairs` wrap themselves so
library callers such as the hloc drop-in get it too). On exit the thresholds are set to the values
glibc's dynamic rule settles on in a process that frees large blocks (32 MiB mmap, 64 MiB trim):
glibc cannot return to its dynamic mode once a threshold was set explicitly. ``malloc_trim`` then
hands the freed memory back when more than :data:`KEEP_FREE_BYTES` (that trim threshold) is
free; less stays for the next block, as glibc itself keeps up to its trim threshold free at the
top of the heap. Trimming always made every small solve fault its pages in again: BAL
49-1800-shrink frees ~20 MiB per solve, ~5,000 page faults, and solved in 91 instead of 104-123 ms
(best of 15 solves in one process, for each rule). Other C libraries (macOS, musl) are left
alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
REUSE_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from (and return to) the heap
STEADY_MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
STEADY_TRIM_THRESHOLD = 2 * STEADY_MMAP_THRESHOLD  # glibc keeps trim = 2 x mmap when adapting

KEEP_FREE_BYTES = STEADY_TRIM_THRESHOLD  # freed heap memory kept on exit for the next block


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _free_heap_bytes(libc: ctypes.CDLL) -> int | None:
    """Bytes free in glibc's heap (all arenas, ``mallinfo2().fordblks``); None before glibc 2.33."""
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2().fordblks


_lock = threading.Lock()
_depth = 0


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on non-glibc
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[None]:
    """Run the block with large freed allocations kept in the heap (glibc only; nestable)."""
    global _depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(M_MMAP_THRESHOLD, REUSE_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, 2 * REUSE_THRESHOLD)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD)
                free = _free_heap_bytes(libc)
                if free is None or free > KEEP_FREE_BYTES:
                    libc.malloc_trim(0)
