"""Large zero-filled buffers without a memset and without 4 KiB page faults.

``torch.zeros`` on the CPU writes every byte, and on a fresh allocation each 4 KiB page faults first: on
the 2-core VM this project measures on that runs at about 3 GB/s, so zeroing 680 MB of edge rows took
longer than computing them. An anonymous mapping is zero by the kernel's promise and costs nothing until
a page is written; asked for transparent huge pages, its first touch runs at about 15 GB/s. Pages never
written (rows a run does not reach) never become resident. Other devices use ``torch.zeros``.
"""

from __future__ import annotations

import math
import mmap

import torch

#: below this, ``torch.zeros`` is as fast (the allocator reuses freed heap memory)
MIN_MAPPED_BYTES = 1 << 24


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor of ``shape``; on the CPU, large ones are fresh anonymous memory (see the module)."""
    n_bytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or n_bytes < MIN_MAPPED_BYTES:
        return torch.zeros(shape, dtype=dtype, device=device)
    mapping = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mapping.madvise(mmap.MADV_HUGEPAGE)
    # the tensor holds the mapping through the buffer protocol; it is unmapped when the tensor is freed
    return torch.frombuffer(mapping, dtype=dtype).view(shape)
