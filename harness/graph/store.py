"""Attribution graphs on disk, so a child process can hand a multi-GB graph to the parent without pickling it.

A saved graph is a folder with ``adjacency.npy`` (the dense ``[target, source]`` float32 adjacency, a ``.npy``
file whose all-zero stretches are holes: :func:`write_adjacency`) and ``meta.pt`` (everything else, small).
:func:`load_result` maps the adjacency read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrbench.api import AttributionResult

ADJACENCY_FILE = "adjacency.npy"
META_FILE = "meta.pt"
#: columns per segment of :func:`write_adjacency`'s zero scan (64 KiB)
SEGMENT_COLUMNS = 16384
#: rows scanned at once: a few MB of temporaries
SCAN_ROWS = 64
_META_FIELDS = (
    "input_tokens",
    "logit_token_ids",
    "logit_probabilities",
    "active_features",
    "activation_values",
    "selected_features",
)


def save_result(result: AttributionResult, directory: str | os.PathLike) -> Path:
    """Write ``result`` into ``directory`` (created if needed) and flush it to disk; returns the folder.

    The flush (``fsync``) makes the writer wait for the disk instead of leaving gigabytes of dirty pages that
    the kernel would write back later, during whatever is measured next.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if result.adjacency_file and os.path.exists(result.adjacency_file):
        # the backend already wrote the adjacency as .npy: move it rather than copy gigabytes
        shutil.move(result.adjacency_file, directory / ADJACENCY_FILE)
        _flush(directory / ADJACENCY_FILE)
        _save_meta(result, directory)
        return directory
    adj = result.adjacency_matrix.detach()
    if adj.device.type != "cpu":
        adj = adj.cpu()
    if adj.dtype != torch.float32:
        adj = adj.float()
    tmp = directory / (ADJACENCY_FILE + ".tmp")
    write_adjacency(adj.contiguous(), tmp)
    os.replace(tmp, directory / ADJACENCY_FILE)
    _save_meta(result, directory)
    return directory


def write_adjacency(adjacency: torch.Tensor, path: Path) -> None:
    """``adjacency`` (contiguous float32, 2-D) as a ``.npy`` file that ``np.load`` reads, flushed to disk.

    Each row is written from its first to its last non-zero :data:`SEGMENT_COLUMNS`-column segment; the
    rest is left as holes, which read back as zeros. A large graph's rows reach only the nodes before them
    (features of lower layers, earlier positions), so about half of its bytes are never written, and the
    whole-zero rows (error, token nodes) not at all. The scan reads never-written memory as the kernel's
    shared zero page, which costs no memory.
    """
    n_rows, n_cols = adjacency.shape
    whole = n_cols - n_cols % SEGMENT_COLUMNS  # columns in whole segments; the rest is one short segment
    values = adjacency.numpy()
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n_rows, n_cols)})
        data_start = f.tell()
        f.flush()
        fd = f.fileno()
        for start in range(0, n_rows, SCAN_ROWS):
            block = adjacency[start : start + SCAN_ROWS]
            nonzero = block[:, :whole].reshape(len(block), -1, SEGMENT_COLUMNS).ne(0).any(2)
            if whole < n_cols:
                nonzero = torch.cat([nonzero, block[:, whole:].ne(0).any(1, keepdim=True)], 1)
            for row, segments in enumerate(nonzero.tolist()):
                if True not in segments:
                    continue
                first = segments.index(True) * SEGMENT_COLUMNS
                stop = min(n_cols, (len(segments) - segments[::-1].index(True)) * SEGMENT_COLUMNS)
                offset = data_start + 4 * ((start + row) * n_cols + first)
                os.pwrite(fd, values[start + row, first:stop].data, offset)
        f.truncate(data_start + 4 * n_rows * n_cols)
        os.fsync(fd)


def _flush(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cached_pages(directory: str | os.PathLike) -> None:
    """Ask the kernel to drop the page cache of a saved graph's adjacency (clean once :func:`save_result` has
    flushed it; pages mapped by a live memmap stay). Reading a 70,000-node graph for parity caches all of its
    20 GB, holes included: left there, it makes the next cell's allocations reclaim it as they go."""
    if not hasattr(os, "posix_fadvise"):  # not on macOS: nothing to do
        return
    try:
        fd = os.open(Path(directory) / ADJACENCY_FILE, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-like plain data (numbers, strings, lists, dicts): what ``weights_only`` loading reads."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _save_meta(result: AttributionResult, directory: Path) -> None:
    meta: dict[str, Any] = {name: getattr(result, name).detach().cpu() for name in _META_FIELDS}
    meta.update(n_layers=int(result.n_layers), phases_s=_plain(dict(result.phases_s)), info=_plain(dict(result.info)))
    torch.save(meta, directory / META_FILE)


def load_result(directory: str | os.PathLike, mmap: bool = True) -> AttributionResult:
    """Load a saved graph; with ``mmap`` the adjacency is a tensor over a read-only ``np.memmap``.

    Nothing is unpickled: ``meta.pt`` is read with ``weights_only=True`` (tensors and plain data only) and the
    adjacency with ``allow_pickle=False``, so a graph folder written by someone else cannot run code here.
    """
    directory = Path(directory)
    meta = torch.load(directory / META_FILE, map_location="cpu", weights_only=True)
    arr = np.load(directory / ADJACENCY_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": we never write to it
        adjacency = torch.from_numpy(arr)
    return AttributionResult(
        adjacency_matrix=adjacency,
        n_layers=meta["n_layers"],
        phases_s=meta.get("phases_s", {}),
        info=meta.get("info", {}),
        **{name: meta[name] for name in _META_FIELDS},
    )
