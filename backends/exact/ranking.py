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
) -> torch.Tensor:
    """The same influences as :func:`circuit_tracer_influences`, reading ``edges`` once."""
    device = edges.device
    n_rows, n_nodes = edges.shape
    row_nodes = row_nodes.to(device)
    scale = 1.0 / row_sums.clamp(min=1e-8)  # circuit-tracer's normalisation, applied on the fly
    square = edges[:, row_nodes].float().abs_().mul_(scale[:, None])  # M[:, rows]
    x = torch.zeros(n_rows, dtype=torch.float32, device=device)
    is_logit = row_nodes >= n_nodes - logit_probabilities.numel()
    x[is_logit] = logit_probabilities.to(device, torch.float32)[
        row_nodes[is_logit] - (n_nodes - logit_probabilities.numel())
    ]
    total = torch.zeros_like(x)
    for _ in range(max_iter):
        total += x
        x = x @ square
        if not x.any():
            break
    else:
        raise RuntimeError("influence computation did not converge")
    weights = total * scale
    influences = torch.zeros(n_nodes, dtype=torch.float32, device=device)
    magnitudes = torch.empty(min(block_rows, n_rows), n_nodes, dtype=torch.float32, device=device)
    for s in range(0, n_rows, block_rows):
        block = edges[s : s + block_rows]
        part = magnitudes[: block.shape[0]].copy_(block).abs_()  # a small reused buffer, no |edges| copy
        influences.addmv_(part.T, weights[s : s + block_rows])
    return influences
