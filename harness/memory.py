"""Memory arithmetic shared by the exact engine and the estimator: one rule for when dense edge rows fit."""

from __future__ import annotations

import psutil
import torch

#: the dense edge store is used while it needs at most this fraction of the device's memory
DENSE_FRACTION = 0.5


def dense_storage_bytes(n_rows: int, n_nodes: int, n_layers: int, n_pos: int) -> int:
    """Bytes of the dense edge rows, circuit-tracer's ranking copy of them, and the square adjacency."""
    n_square = n_rows + n_layers * n_pos + n_pos
    return 4 * (2 * n_rows * n_nodes + n_square * n_square)


def memory_for(device: torch.device) -> int:
    """Total memory of the device the edge rows live on (host RAM for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(psutil.virtual_memory().total)


def dense_fits(n_rows: int, n_nodes: int, n_layers: int, n_pos: int, device: torch.device) -> bool:
    """Whether dense edge rows (and their square adjacency) fit comfortably on ``device``."""
    return dense_storage_bytes(n_rows, n_nodes, n_layers, n_pos) <= DENSE_FRACTION * memory_for(device)
