"""Parity metrics on synthetic graphs (fast) and the graph store round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from attrbench.api import AttributionResult
from attrbench.graph.interop import to_circuit_tracer_graph
from attrbench.graph.parity import common_nodes, compare, node_identities
from attrbench.graph.store import load_result, save_result

N_LAYERS, N_POS = 3, 5
LOGIT_IDS = [7, 3, 11]


def make_graph(seed: int = 0, n_active: int = 60, n_sel: int = 30) -> AttributionResult:
    """A DAG-shaped graph: edges only from lower 'levels' (tokens < layer 0 < layer 1 ... < logits)."""
    g = torch.Generator().manual_seed(seed)
    feats = sorted(
        {
            (int(l), int(p), int(f))
            for l, p, f in zip(
                torch.randint(0, N_LAYERS, (4 * n_active,), generator=g),
                torch.randint(1, N_POS, (4 * n_active,), generator=g),
                torch.randint(0, 50, (4 * n_active,), generator=g),
                strict=False,
            )
        }
    )[:n_active]
    active = torch.tensor(feats, dtype=torch.long)
    selected = torch.sort(torch.randperm(len(feats), generator=g)[:n_sel]).values
    return _assemble(active, selected, seed)


def _levels(active, selected):
    lv = [int(active[i, 0]) + 1 for i in selected]
    lv += [layer + 1 for layer in range(N_LAYERS) for _ in range(N_POS)]  # errors: sources only
    lv += [0] * N_POS
    lv += [N_LAYERS + 2] * len(LOGIT_IDS)
    return torch.tensor(lv)


def _assemble(active, selected, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    lv = _levels(active, selected)
    n = lv.numel()
    adj = torch.randn(n, n, generator=g) * (torch.rand(n, n, generator=g) < 0.5)
    adj *= (lv[None, :] < lv[:, None]).float()
    n_sel = selected.numel()
    adj[n_sel : n_sel + N_LAYERS * N_POS + N_POS] = 0  # errors and tokens have no incoming edges
    return AttributionResult(
        input_tokens=torch.arange(N_POS) + 4,
        logit_token_ids=torch.tensor(LOGIT_IDS),
        logit_probabilities=torch.tensor([0.5, 0.3, 0.2]),
        active_features=active,
        activation_values=torch.rand(n_sel, generator=g),
        selected_features=selected,
        adjacency_matrix=adj,
        n_layers=N_LAYERS,
    )


def permuted(result: AttributionResult, seed: int = 5) -> AttributionResult:
    """Same graph, nodes in another row order: active features shuffled, selection and logits reordered."""
    g = torch.Generator().manual_seed(seed)
    n_active = result.active_features.shape[0]
    perm_active = torch.randperm(n_active, generator=g)
    new_active = result.active_features[perm_active]
    inverse = torch.empty_like(perm_active)
    inverse[perm_active] = torch.arange(n_active)
    n_sel = result.selected_features.numel()
    order_sel = torch.randperm(n_sel, generator=g)
    new_selected = inverse[result.selected_features[order_sel]]
    n_mid = result.n_layers * result.n_pos + result.n_pos
    order_logits = torch.tensor([2, 0, 1])
    order = torch.cat([order_sel, torch.arange(n_sel, n_sel + n_mid), n_sel + n_mid + order_logits])
    adj = result.adjacency_matrix[order][:, order]
    return AttributionResult(
        input_tokens=result.input_tokens,
        logit_token_ids=result.logit_token_ids[order_logits],
        logit_probabilities=result.logit_probabilities[order_logits],
        active_features=new_active,
        activation_values=result.activation_values[order_sel],
        selected_features=new_selected,
        adjacency_matrix=adj,
        n_layers=result.n_layers,
    )


def test_identical_graphs_are_perfect():
    a = make_graph()
    p = compare(a, a, "reference")
    assert p["against"] == "reference"
    assert p["selected_jaccard"] == 1.0
    assert p["rel_frobenius"] == 0.0 and p["max_abs"] == 0.0
    assert p["edge_recall"] == 1.0
    assert p["pruned_node_jaccard"] == 1.0


def test_permuted_rows_same_identities_are_exact():
    a = make_graph()
    b = permuted(a)
    assert not torch.equal(a.adjacency_matrix, b.adjacency_matrix)
    idx_b, idx_a = common_nodes(b, a)
    assert idx_a.numel() == a.adjacency_matrix.shape[0]
    p = compare(b, a, "reference")
    assert p["selected_jaccard"] == 1.0
    assert p["rel_frobenius"] == 0.0 and p["max_abs"] == 0.0
    assert p["edge_recall"] == 1.0
    assert p["pruned_node_jaccard"] == 1.0


def test_noise_is_measured():
    a = make_graph()
    b = make_graph()
    rows, cols = torch.nonzero(a.adjacency_matrix, as_tuple=True)
    b.adjacency_matrix[rows[:3], cols[:3]] += 0.25
    p = compare(b, a, "reference")
    assert p["selected_jaccard"] == 1.0
    assert p["max_abs"] == pytest.approx(0.25, abs=1e-6)
    expected = (3 * 0.25**2) ** 0.5 / float(a.adjacency_matrix.double().norm())
    assert p["rel_frobenius"] == pytest.approx(expected, rel=1e-5)
    assert 0.9 <= p["edge_recall"] <= 1.0


def test_swapped_feature_noise_and_permutation_are_aligned():
    a = make_graph()
    b = make_graph()
    n_sel = a.selected_features.numel()
    unselected = sorted(set(range(a.active_features.shape[0])) - set(a.selected_features.tolist()))
    # the backend selected another feature in slot 5 (its row and column hold other numbers) ...
    b.selected_features[5] = unselected[0]
    b.adjacency_matrix[5] = torch.randn(b.adjacency_matrix.shape[1]).abs() * 10
    b.adjacency_matrix[:, 5] = 7.0
    # ... and two common edges carry noise
    b.adjacency_matrix[n_sel + N_LAYERS * N_POS + N_POS, 0] += 0.5  # first logit <- feature 0
    b.adjacency_matrix[3, n_sel] -= 0.125  # feature 3 <- first error node
    b = permuted(b)  # and its rows come in another order
    p = compare(b, a, "reference")
    assert p["selected_jaccard"] == pytest.approx((n_sel - 1) / (n_sel + 1))
    idx_b, idx_a = common_nodes(b, a)
    assert idx_a.numel() == a.adjacency_matrix.shape[0] - 1
    assert 5 not in idx_a.tolist()
    # only the two noisy edges differ among the common nodes: the swapped node's 10s and 7s are excluded
    assert p["max_abs"] == pytest.approx(0.5, abs=1e-6)
    keep = [i for i in range(a.adjacency_matrix.shape[0]) if i != 5]
    ref = a.adjacency_matrix[keep][:, keep].double().norm()
    assert p["rel_frobenius"] == pytest.approx((0.5**2 + 0.125**2) ** 0.5 / float(ref), rel=1e-5)


def test_large_graphs_use_streaming_prune(monkeypatch):
    import attrbench.graph.parity as parity

    a, b = make_graph(2), make_graph(2)
    b.adjacency_matrix.mul_(1 + 0.3 * torch.randn(b.adjacency_matrix.shape, generator=torch.Generator().manual_seed(4)))
    dense_same, dense_noisy = parity.pruned_node_jaccard(a, a), parity.pruned_node_jaccard(b, a)
    monkeypatch.setattr(parity, "MAX_DENSE_PRUNE_NODES", 10)  # every graph takes the streaming prune
    assert compare(a, a, "autodiff-free")["pruned_node_jaccard"] == dense_same == 1.0
    assert parity.pruned_node_jaccard(b, a) == dense_noisy
    # the yardstick's kept nodes, when the caller has them, are used instead of pruning it again
    assert parity.pruned_node_jaccard(b, a, yardstick_pruned=parity.pruned_nodes(a)) == dense_noisy
    assert parity.pruned_node_jaccard(a, a, yardstick_pruned=set()) == 0.0
    monkeypatch.setenv("ATTRBENCH_LARGE_PRUNE_PARITY", "0")
    assert parity.pruned_node_jaccard(a, a) is None  # skipped on request above the size limit


def test_blockwise_matches_dense(monkeypatch):
    import attrbench.graph.parity as parity

    a, b = make_graph(1), make_graph(1)
    b.adjacency_matrix.mul_(
        1 + 1e-3 * torch.randn(b.adjacency_matrix.shape, generator=torch.Generator().manual_seed(3))
    )
    dense = compare(b, a, "reference")
    monkeypatch.setattr(parity, "BLOCK_ELEMENTS", 7)  # one row per block
    blocked = compare(b, a, "reference")
    for k in ("rel_frobenius", "max_abs", "edge_recall", "selected_jaccard"):
        assert blocked[k] == pytest.approx(dense[k], rel=1e-9)


def test_edge_recall_counts_top_edges():
    a = make_graph(2)
    b = make_graph(2)
    # zero the yardstick's single largest edge in the backend: recall drops by exactly one edge
    flat = a.adjacency_matrix.abs().flatten()
    top = int(flat.argmax())
    b.adjacency_matrix.view(-1)[top] = 0.0
    p = compare(b, a, "reference")
    assert p["edge_recall"] < 1.0


def test_graph_store_round_trip_is_memory_mapped(tmp_path):
    a = make_graph()
    a.phases_s = {"forward": 1.0}
    a.info = {"flops": 123}
    save_result(a, tmp_path / "g")
    b = load_result(tmp_path / "g")
    assert isinstance(np.load(tmp_path / "g" / "adjacency.npy", mmap_mode="r"), np.memmap)
    assert torch.equal(a.adjacency_matrix, b.adjacency_matrix)
    for name in ("input_tokens", "logit_token_ids", "active_features", "selected_features"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert b.n_layers == N_LAYERS and b.phases_s == {"forward": 1.0} and b.info == {"flops": 123}
    assert compare(b, a, "reference")["rel_frobenius"] == 0.0


def test_to_circuit_tracer_graph():
    from circuit_tracer.graph import Graph, prune_graph

    from attrbench.workload.spec import ModelSpec, WorkloadSpec

    spec = WorkloadSpec(model=ModelSpec(num_hidden_layers=N_LAYERS, vocab_size=64))
    a = make_graph()
    g = to_circuit_tracer_graph(a, spec)
    assert isinstance(g, Graph)
    assert [t.vocab_idx for t in g.logit_targets] == LOGIT_IDS
    assert g.logit_targets[0].token_str == "t7"
    assert g.cfg.n_layers == N_LAYERS
    assert prune_graph(g).node_mask.shape[0] == a.adjacency_matrix.shape[0]
    assert len(node_identities(a)) == a.adjacency_matrix.shape[0]


@pytest.mark.parametrize("n_cols", [100, 16384 * 2, 16384 * 2 + 50])
def test_written_adjacency_reads_back_with_its_zero_stretches_as_holes(tmp_path, n_cols):
    """Rows are written from their first to their last non-zero segment (the last one may be short); all
    of it reads back exactly, and a matrix that is mostly zero takes less disk than its size."""
    from attrbench.graph.store import SEGMENT_COLUMNS, write_adjacency

    torch.manual_seed(0)
    adjacency = torch.zeros(200, n_cols)
    adjacency[3, 0] = 1.0  # first column
    adjacency[5, n_cols - 1] = -2.0  # last column, in the short segment where there is one
    adjacency[7, n_cols // 2 :] = torch.randn(n_cols - n_cols // 2)  # a second half
    adjacency[150:, :5] = torch.randn(50, 5)
    path = tmp_path / "a.npy"
    write_adjacency(adjacency, path)
    assert torch.equal(torch.from_numpy(np.load(path)), adjacency)
    if n_cols > 2 * SEGMENT_COLUMNS:
        assert os.stat(path).st_blocks * 512 < adjacency.numel()  # under a quarter of its 4 bytes a value
