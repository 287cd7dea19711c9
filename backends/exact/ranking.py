"""Influence ranking of features from the edge rows computed so far.

circuit-tracer ranks unvisited features by ``compute_partial_influences``: with ``M`` the row-normalised
``|edges|`` and ``x_0`` the logit probabilities on the logit rows, it iterates ``y_k = x_k M`` and
``x_{k+1} = y_k[rows]`` until ``x`` is exactly zero (the graph is a DAG, so at most ``n_layers + 2`` steps)
and returns ``sum_k y_k``. Each step reads the whole ``[rows, nodes]`` matrix after copying it once.

:func:`streamed_influences` computes the same sum with one pass over the matrix: by linearity
``sum_k y_k = (sum_k x_k) M``, and the ``x_k`` only need the square block ``M[:, rows]``. Row sums are kept
as rows are written, so the normalised matrix is never materialised.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

import torch


def circuit_tracer_influences(
    edges: torch.Tensor, logit_probabilities: torch.Tensor, row_nodes: torch.Tensor
) -> torch.Tensor:
    """circuit-tracer's own ranking function, called as ``attribute()`` calls it."""
    from circuit_tracer.graph import compute_partial_influences

    return compute_partial_influences(
        edges, logit_probabilities.to(edges.device, torch.float32), row_nodes.to(edges.device), device=edges.device
    )


def streamed_influences(
    edges: torch.Tensor,
    logit_probabilities: torch.Tensor,
    row_nodes: torch.Tensor,
    row_sums: torch.Tensor,
    max_iter: int = 128,
    block_rows: int = 64,
    reach: Callable[[int, int], list[tuple[int, int]]] | None = None,
) -> torch.Tensor:
    """The same influences as :func:`circuit_tracer_influences`, reading ``edges`` once.

    ``reach(first, stop)``, where given, names the column ranges in which rows ``first:stop`` can have
    edges (every other entry is zero): only those are read, so pages of a fresh store that the VJPs never
    wrote are never faulted in (a CPU's dense store; ``small``, 4,000 nodes: ~60,000 faults per run)."""
    device = edges.device
    n_rows, n_nodes = edges.shape
    row_nodes = row_nodes.to(device)
    ranges_of = reach or (lambda first, stop: [(0, n_nodes)])
    scale = 1.0 / row_sums.clamp(min=1e-8)  # circuit-tracer's normalisation, applied on the fly
    blocks = [(s, min(s + block_rows, n_rows)) for s in range(0, n_rows, block_rows)]
    order: torch.Tensor | None = None
    if reach is None:
        square = edges[:, row_nodes].float().abs_().mul_(scale[:, None])  # M[:, rows]
    else:  # M[:, rows] with its columns in ascending node order: the nodes inside a range are one slice
        order = torch.argsort(row_nodes)
        sorted_nodes = row_nodes[order]
        bounds = sorted_nodes.tolist()
        square = torch.zeros(n_rows, n_rows, dtype=torch.float32, device=device)
        for s, e in blocks:
            for a, b in ranges_of(s, e):
                lo, hi = bisect_left(bounds, a), bisect_left(bounds, b)
                if hi > lo:
                    square[s:e, lo:hi] = edges[s:e, sorted_nodes[lo:hi]].float().abs_().mul_(scale[s:e, None])
    x = torch.zeros(n_rows, dtype=torch.float32, device=device)
    is_logit = row_nodes >= n_nodes - logit_probabilities.numel()
    x[is_logit] = logit_probabilities.to(device, torch.float32)[
        row_nodes[is_logit] - (n_nodes - logit_probabilities.numel())
    ]
    total = torch.zeros_like(x)
    for _ in range(max_iter):
        total += x
        x = x @ square if order is None else torch.empty_like(x).index_copy_(0, order, x @ square)
        if not x.any():
            break
    else:
        raise RuntimeError("influence computation did not converge")
    weights = total * scale
    influences = torch.zeros(n_nodes, dtype=torch.float32, device=device)
    magnitudes = torch.empty(min(block_rows, n_rows), n_nodes, dtype=torch.float32, device=device)
    for s, e in blocks:
        for a, b in ranges_of(s, e):
            part = magnitudes[: e - s, : b - a].copy_(edges[s:e, a:b]).abs_()  # a small reused buffer
            influences[a:b].addmv_(part.T, weights[s:e])
    return influences
