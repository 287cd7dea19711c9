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
#: never trim the heap's free top back to the kernel (mallopt(3): -1 disables trimming)
TRIM_THRESHOLD_BYTES = -1
#: grow the heap in steps of this much, not page by page
TOP_PAD_BYTES = 256 << 20


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
