"""Attribution graphs on disk, so a child process can hand a multi-GB graph to the parent without pickling it.

A saved graph is a folder with ``adjacency.npy`` (the dense ``[target, source]`` float32 adjacency, written with
``np.save``) and ``meta.pt`` (everything else, small). :func:`load_result` maps the adjacency read-only.
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
_META_FIELDS = (
    "input_tokens",
    "logit_token_ids",
    "logit_probabilities",
    "active_features",
    "activation_values",
    "selected_features",
)


def save_result(result: AttributionResult, directory: str | os.PathLike) -> Path:
    """Write ``result`` into ``directory`` (created if needed); returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if result.adjacency_file and os.path.exists(result.adjacency_file):
        # the backend already wrote the adjacency as .npy: move it rather than copy gigabytes
        shutil.move(result.adjacency_file, directory / ADJACENCY_FILE)
        _save_meta(result, directory)
        return directory
    adj = result.adjacency_matrix.detach()
    if adj.device.type != "cpu":
        adj = adj.cpu()
    if adj.dtype != torch.float32:
        adj = adj.float()
    arr = adj.contiguous().numpy()
    tmp = directory / (ADJACENCY_FILE + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, directory / ADJACENCY_FILE)
    _save_meta(result, directory)
    return directory


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
