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


class PrunedEdgeStore:
    """Edge rows with every entry below ``threshold`` times its row's largest ``|edge|`` dropped.

    Kept entries are coordinate lists (int32 row, int32 column, float32 value: 12 bytes each). Row sums
    for the influence normalisation are taken before pruning, so ranking sees the same scale as the
    exact backends; ranking and packaging work on the kept entries only.
    """

    def __init__(self, n_rows: int, n_nodes: int, device: torch.device, threshold: float):
        self.threshold = threshold
        self.n_nodes = n_nodes
        self.device = device
        self.row_nodes = torch.zeros(n_rows, dtype=torch.long)
        self.row_sums = torch.zeros(n_rows, dtype=torch.float32, device=device)
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.n_filled = 0
        self.n_dense = 0  # entries a dense store would have held, for the kept fraction

    def append(self, block: torch.Tensor, nodes: torch.Tensor) -> None:
        block = block.float()
        magnitude = block.abs()
        start = self.n_filled
        self.row_sums[start:start + block.shape[0]] = magnitude.sum(1)
        keep = magnitude >= self.threshold * magnitude.amax(1, keepdim=True)
        keep &= magnitude > 0
        r, c = keep.nonzero(as_tuple=True)
        self.chunks.append(((r + start).int(), c.int(), block[r, c]))
        self.row_nodes[start:start + block.shape[0]] = nodes
        self.n_filled += block.shape[0]
        self.n_dense += block.numel()

    def _entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if len(self.chunks) > 1:
            self.chunks = [tuple(torch.cat(parts) for parts in zip(*self.chunks))]
        if not self.chunks:
            empty = torch.zeros(0, dtype=torch.int32, device=self.device)
            return empty, empty, torch.zeros(0, device=self.device)
        return self.chunks[0]

    @property
    def kept_fraction(self) -> float:
        return float(self._entries()[0].numel()) / max(1, self.n_dense)

    def influences(self, logit_probabilities: torch.Tensor, rule: str = "streamed",
                   max_iter: int = 128) -> torch.Tensor:
        """:func:`attrbench.backends.ranking.streamed_influences` over the kept entries."""
        rows, cols, values = self._entries()
        rows, cols = rows.long(), cols.long()
        n = self.n_filled
        row_nodes = self.row_nodes[:n].to(self.device)
        scale = 1.0 / self.row_sums[:n].clamp(min=1e-8)
        weights = values.abs() * scale[rows]
        row_of_node = torch.full((self.n_nodes,), -1, dtype=torch.long, device=self.device)
        row_of_node[row_nodes] = torch.arange(n, device=self.device)
        into_row = row_of_node[cols]
        on_rows = into_row >= 0  # entries whose source node is itself a computed row
        sq_rows, sq_cols, sq_weights = rows[on_rows], into_row[on_rows], weights[on_rows]
        n_logits = logit_probabilities.numel()
        x = torch.zeros(n, dtype=torch.float32, device=self.device)
        is_logit = row_nodes >= self.n_nodes - n_logits
        x[is_logit] = logit_probabilities.to(self.device, torch.float32)[row_nodes[is_logit] - (self.n_nodes - n_logits)]
        total = torch.zeros_like(x)
        for _ in range(max_iter):
            total += x
            x = torch.zeros_like(x).index_add_(0, sq_cols, x[sq_rows] * sq_weights)
            if not x.any():
                break
        else:
            raise RuntimeError("influence computation did not converge")
        return torch.zeros(self.n_nodes, device=self.device).index_add_(0, cols, total[rows] * weights)

    def package(self, selected: torch.Tensor, n_active: int, n_logits: int) -> torch.Tensor:
        rows, cols, values = self._entries()
        rows, cols = rows.long().cpu(), cols.long().cpu()
        n_features = selected.numel()
        n = n_features + self.n_nodes - n_active
        column_of_node = torch.full((self.n_nodes,), -1, dtype=torch.long)
        column_of_node[selected] = torch.arange(n_features)
        column_of_node[n_active:] = torch.arange(n_features, n)
        row_nodes = self.row_nodes[:self.n_filled]
        dest_row = torch.where(row_nodes >= n_active, row_nodes - n_active + n_features,
                               torch.searchsorted(selected, row_nodes.clamp(max=n_active - 1)))
        keep = column_of_node[cols] >= 0
        adjacency = torch.zeros(n, n, dtype=torch.float32)
        adjacency[dest_row[rows[keep]], column_of_node[cols[keep]]] = values.cpu()[keep]
        self.chunks = []
        return adjacency
