"""How cost grows with the prompt: each backend's time and peak memory against prompt length.

A run over several prompt lengths (``attrbench run --n-tokens 64,256,1024,2048``) has, per backend and node
count, one point per length. :func:`fit_exponent` is the least-squares slope of ``log(y)`` against
``log(n_tokens)`` over the ok points: an exponent of 2 means cost grows with the square of the prompt.
:func:`growth_records` gives those exponents, the points behind them and the lengths where the backend did
not complete (``oom``, ``timeout``, ...), as the results file's ``growth`` list and the reporters show them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def peak_bytes(cell: dict, cuda: bool) -> float | None:
    """The peak memory that counts: GPU (NVML, else torch's allocator) on cuda, else host RSS."""
    if cuda:
        gpu = cell.get("peak_gpu_bytes")
        return gpu if gpu is not None else cell.get("peak_gpu_torch_bytes")
    return cell.get("peak_host_bytes")


def fit_exponent(points: Iterable[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``log(y)`` on ``log(x)`` over the points with positive x and y; None when fewer
    than two distinct x remain."""
    logs = [(math.log(x), math.log(y)) for x, y in points if x and y and x > 0 and y > 0]
    if len({x for x, _ in logs}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in logs)
    my = statistics.fmean(y for _, y in logs)
    sxx = sum((x - mx) ** 2 for x, _ in logs)
    return sum((x - mx) * (y - my) for x, y in logs) / sxx


def cell_length(cell: dict, default: int | None) -> int | None:
    """A cell's prompt length (``default``, the workload's own, for cells written before sweeps)."""
    tokens = cell.get("n_tokens")
    return default if tokens is None else int(tokens)


def curve_points(cells: Sequence[dict], default_length: int | None, cuda: bool) -> dict[tuple[str, int], list[dict]]:
    """Per (backend, nodes): one point per prompt length, ascending: ``{"n_tokens", "status", "wall_s",
    "peak_bytes", "n_active"}`` (median wall time and largest peak over the ok repeats; a length with no ok
    repeat has the status of its last repeat and no figures)."""
    groups: dict[tuple[str, int, int | None], list[dict]] = {}
    for cell in cells:
        key = (str(cell.get("backend")), int(cell.get("nodes") or 0), cell_length(cell, default_length))
        groups.setdefault(key, []).append(cell)
    out: dict[tuple[str, int], list[dict]] = {}
    for (backend, nodes, tokens), group in groups.items():
        if tokens is None:
            continue
        group = sorted(group, key=lambda c: c.get("repeat") or 0)
        ok = [c for c in group if c.get("status") == "ok"]
        walls = [float(c["wall_s"]) for c in ok if c.get("wall_s")]
        peaks = [p for c in ok if (p := peak_bytes(c, cuda)) is not None]
        out.setdefault((backend, nodes), []).append(
            {
                "n_tokens": tokens,
                "status": "ok" if ok else str(group[-1].get("status") or "error"),
                "wall_s": statistics.median(walls) if walls else None,
                "peak_bytes": max(peaks) if peaks else None,
                "n_active": (ok or group)[0].get("n_active"),
            }
        )
    for points in out.values():
        points.sort(key=lambda p: p["n_tokens"])
    return out


def prompt_length(config: dict[str, Any] | None) -> int | None:
    """The prompt length of a workload record's ``config`` (``prompt.n_tokens`` or the number of token ids)."""
    prompt = (config or {}).get("prompt") or {}
    if prompt.get("token_ids") is not None:
        return len(prompt["token_ids"])
    tokens = prompt.get("n_tokens")
    return int(tokens) if isinstance(tokens, int) else None


def _default_length(result: dict) -> int | None:
    return prompt_length((result.get("workload") or {}).get("config"))


def lengths_of(result: dict) -> list[int]:
    """The distinct prompt lengths of a run's cells, ascending."""
    default = _default_length(result)
    found = {cell_length(c, default) for c in result.get("cells") or []}
    return sorted(t for t in found if t is not None)


def growth_records(result: dict) -> list[dict[str, Any]]:
    """Per (backend, nodes) of a run over at least two prompt lengths: the time and memory exponents, the
    points behind them and the lengths where the backend did not complete. [] for a one-length run."""
    if len(lengths_of(result)) < 2:
        return []
    cuda = str((result.get("settings") or {}).get("device") or "cpu").startswith("cuda")
    out = []
    for (backend, nodes), points in curve_points(result.get("cells") or [], _default_length(result), cuda).items():
        ok = [p for p in points if p["status"] == "ok"]
        out.append(
            {
                "backend": backend,
                "nodes": nodes,
                "time_exponent": fit_exponent((p["n_tokens"], p["wall_s"]) for p in ok),
                "memory_exponent": fit_exponent((p["n_tokens"], p["peak_bytes"]) for p in ok),
                "fitted_n_tokens": [p["n_tokens"] for p in ok if p["wall_s"]],
                "failed": {str(p["n_tokens"]): p["status"] for p in points if p["status"] != "ok"},
                "points": points,
            }
        )
    return out
