"""Where the exact engine keeps edge rows while it computes them, ranks from them and packages them.

:class:`DenseEdgeStore` is circuit-tracer's layout: one dense float32 row per computed target over every
node. :class:`PrunedEdgeStore` (approximate-pruned) keeps only the entries of each row above a fraction
of the row's largest magnitude, as coordinate lists.
"""

from __future__ import annotations

import torch

from attrbench.backends import ranking

#: rows packaged per block, so that packaging never holds a second full copy of the edge rows
PACKAGE_BLOCK_ROWS = 4096


class DenseEdgeStore:
    """Dense ``[rows, nodes]`` float32 edge rows, the row-node map and each row's ``|.|`` sum."""

    def __init__(self, n_rows: int, n_nodes: int, device: torch.device):
        self.edges = torch.zeros(n_rows, n_nodes, dtype=torch.float32, device=device)
        self.row_nodes = torch.zeros(n_rows, dtype=torch.long)
        self.row_sums = torch.zeros(n_rows, dtype=torch.float32, device=device)
        self.n_filled = 0

    def append(self, block: torch.Tensor, nodes: torch.Tensor) -> None:
        """Store ``block`` (``[b, row_size]``, row_size <= nodes) as the next rows, for target ``nodes``."""
        start, stop = self.n_filled, self.n_filled + block.shape[0]
        self.edges[start:stop, :block.shape[1]] = block
        self.row_sums[start:stop] = self.edges[start:stop].abs().sum(1)
        self.row_nodes[start:stop] = nodes
        self.n_filled = stop

    def influences(self, logit_probabilities: torch.Tensor, rule: str) -> torch.Tensor:
        """Node influences from the rows so far, by circuit-tracer's function or the one-pass equivalent."""
        rows = slice(0, self.n_filled)
        if rule == "circuit-tracer":
            return ranking.circuit_tracer_influences(self.edges[rows], logit_probabilities, self.row_nodes[rows])
        return ranking.streamed_influences(self.edges[rows], logit_probabilities, self.row_nodes[rows],
                                           self.row_sums[rows])

    def package(self, selected: torch.Tensor, n_active: int, n_logits: int) -> torch.Tensor:
        """circuit-tracer's square adjacency: rows and columns in node order, only selected features kept."""
        edges, n_features = self.edges, selected.numel()
        cols = torch.cat([selected, torch.arange(n_active, edges.shape[1])]).to(edges.device)
        n = cols.numel()
        adjacency = torch.zeros(n, n, dtype=torch.float32)
        order = self.row_nodes.argsort()  # feature rows first (by feature index), then logit rows
        for s in range(0, order.numel(), PACKAGE_BLOCK_ROWS):
            rows = order[s:s + PACKAGE_BLOCK_ROWS]
            dest = torch.arange(s, s + rows.numel())
            dest[dest >= n_features] += n - n_features - n_logits  # logit rows are the last n_logits rows
            adjacency[dest] = edges[rows.to(edges.device)][:, cols].cpu()
        self.edges = None  # the rows are in the adjacency now
        return adjacency
