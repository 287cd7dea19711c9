"""The one-pass ranking equals circuit-tracer's ranking function, also when it reads reachable columns only."""

from __future__ import annotations

import torch

from attrbench.backends.exact.ranking import circuit_tracer_influences, streamed_influences


def test_streamed_influences_match_circuit_tracer_with_and_without_reach():
    torch.manual_seed(0)
    per_layer, n_layers, n_logits = 10, 3, 3
    n_features = per_layer * n_layers
    n_nodes = n_features + n_logits
    # rows: the logits, then a few features of each layer, ordered by descending target layer
    row_nodes = torch.tensor([30, 31, 32, 25, 21, 28, 14, 11, 19, 3, 7])
    layers = torch.where(row_nodes >= n_features, n_layers, row_nodes // per_layer)
    edges = torch.zeros(len(row_nodes), n_nodes)
    for r, layer in enumerate(layers.tolist()):  # a row has edges from the features of lower layers only
        edges[r, : per_layer * layer] = torch.randn(per_layer * layer)
    probabilities = torch.tensor([0.5, 0.3, 0.2])
    expected = circuit_tracer_influences(edges, probabilities, row_nodes)

    def reach(first: int, stop: int) -> list[tuple[int, int]]:
        return [(0, per_layer * int(layers[first:stop].max()))]

    row_sums = edges.abs().sum(1)
    for block_rows in (1, 4, 64):
        whole = streamed_influences(edges, probabilities, row_nodes, row_sums, block_rows=block_rows)
        reached = streamed_influences(edges, probabilities, row_nodes, row_sums, block_rows=block_rows, reach=reach)
        torch.testing.assert_close(whole, expected)
        torch.testing.assert_close(reached, expected)
    assert expected[:n_features].abs().sum() > 0
