"""Large zero-filled buffers that cost memory only where they are written.

``torch.zeros`` on the CPU writes every byte: on the 2-core VM this project measures on, a fresh 680 MB of
edge rows took 0.25 s to zero (page faults included), longer than computing them. An anonymous mapping is
zero by the kernel's promise and costs nothing until a page is written, and reading a page never written
maps the shared zero page. An edge row written only over the columns its target can reach (features and
errors of lower layers, positions up to its own) therefore holds memory for those columns alone: the
dense store is "reachable columns only" without a ragged layout. Ordinary 4 KiB pages are used on purpose:
transparent huge pages fault faster but would make whole 2 MiB runs of unreachable columns resident
(measured on ``small``, 4,000 nodes, batch 64: 0.82 GiB peak and 2.2 s with 4 KiB pages, 1.32 GiB and
3.1 s with huge pages). Other devices use ``torch.zeros``.
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
    # the tensor holds the mapping through the buffer protocol; it is unmapped when the tensor is freed
    return torch.frombuffer(mapping, dtype=dtype).view(shape)
