"""glibc malloc settings for a cell's process: large temporaries reuse freed memory instead of new pages.

A VJP step allocates and frees temporaries of tens of MB (``[batch, positions, d_model]`` products, GEMM
outputs). glibc's defaults hand such a block back to the kernel when it is freed (``mmap`` above an adaptive
threshold, heap trimming below it), so the next one of the same size page-faults and is zeroed by the
kernel all over again: on ``small`` (4,000 nodes) that was a fifth of gqa-shared's wall time. Every cell
runs with the same settings, the reference (circuit-tracer) included, so ratios stay like for like.
"""

from __future__ import annotations

import ctypes

#: mallopt parameters from <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap and are reused: glibc's largest allowed value (64-bit)
MMAP_THRESHOLD_BYTES = 32 << 20
#: hand the heap's free top back to the kernel only beyond this
TRIM_THRESHOLD_BYTES = 256 << 20
#: grow the heap in steps of this much, not page by page
TOP_PAD_BYTES = 64 << 20


def keep_freed_memory() -> bool:
    """Apply the settings to this process (glibc only); returns whether they were applied."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): its own allocator's defaults stay
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)


def release_free_memory() -> None:
    """Hand the heap's free memory back to the kernel now (glibc's ``malloc_trim``; nothing elsewhere).

    For phases that free gigabytes while they write a file: the lean store frees its row blocks as packaging
    writes the graph, and memory the heap keeps is memory the page cache lacks, so the writes are throttled
    sooner (gqa-shared, 70,000 nodes: packaging 9.7 s with glibc's defaults, 13.9 s with the settings above
    and no release)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
