"""Parity of a backend's graph against a yardstick graph, aligned by node identity.

Node identities: a feature is (layer, position, feature index) from ``active_features[selected_features]``,
an error node is (layer, position), a token node its position and a logit node its vocabulary id. Row order
never matters. Every metric over the adjacency (``[target, source]``) is computed over the submatrix of the
nodes both graphs have, blockwise over rows with float64 accumulation, so that memory-mapped graphs of
70,000 nodes are never copied densely.

Top-edge selection uses an exact two-level radix select on the float32 bit patterns of ``|w|`` (for
non-negative floats the bit pattern orders like the value), so no global sort of N^2 edges is needed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from attrbench.api import AttributionResult
from attrbench.graph.interop import to_circuit_tracer_graph
from attrbench.graph.prune import TopHistogram, abs_bits, prune, radix_select
from attrbench.guard import LARGE_PRUNE_PARITY_ENV

#: graphs with more nodes than this are pruned by the streaming attrbench.graph.prune.prune instead of prune_graph
MAX_DENSE_PRUNE_NODES = 30_000
#: fraction of total |weight| the yardstick's top edges must carry
EDGE_MASS = 0.99
#: elements per row block (about 256 MiB of float32 per matrix)
BLOCK_ELEMENTS = 1 << 26
MAX_BLOCK_ROWS = 2048


def node_identities(result: AttributionResult) -> list[tuple]:
    """The identity of every node of ``result`` in its row order."""
    feats = result.active_features[result.selected_features.long()].tolist()
    ids: list[tuple] = [("f", int(layer), int(p), int(f)) for layer, p, f in feats]
    n_pos = result.n_pos
    ids += [("e", layer, pos) for layer in range(result.n_layers) for pos in range(n_pos)]
    ids += [("t", pos) for pos in range(n_pos)]
    ids += [("l", int(v)) for v in result.logit_token_ids.tolist()]
    n = result.adjacency_matrix.shape[0]
    if len(ids) != n:
        raise ValueError(f"graph has {n} nodes but its metadata describes {len(ids)}")
    return ids


def common_nodes(result: AttributionResult, yardstick: AttributionResult) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into result, into yardstick) of the nodes both have, in the yardstick's order."""
    ids_r = {ident: i for i, ident in enumerate(node_identities(result))}
    idx_r, idx_y = [], []
    for j, ident in enumerate(node_identities(yardstick)):
        i = ids_r.get(ident)
        if i is not None:
            idx_r.append(i)
            idx_y.append(j)
    return torch.tensor(idx_r, dtype=torch.long), torch.tensor(idx_y, dtype=torch.long)


def _jaccard(a: set, b: set) -> float:
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    rows = max(1, min(MAX_BLOCK_ROWS, BLOCK_ELEMENTS // max(1, n_cols)))
    for r0 in range(0, n_rows, rows):
        yield r0, min(n_rows, r0 + rows)


def _submatrix_blocks(adj: torch.Tensor, idx: torch.Tensor) -> Callable[[], Iterator[torch.Tensor]]:
    """A re-iterable generator of float32 row blocks of ``adj[idx][:, idx]``."""
    sorted_cols = bool(idx.numel() < 2 or (idx[1:] > idx[:-1]).all())
    contiguous = sorted_cols and idx.numel() == adj.shape[1] and (idx.numel() == 0 or int(idx[0]) == 0)

    def gen() -> Iterator[torch.Tensor]:
        for r0, r1 in _row_blocks(idx.numel(), idx.numel()):
            if contiguous:  # the whole graph in its own order: a view, no gathered copy
                yield adj[r0:r1].float()
            else:
                yield adj.index_select(0, idx[r0:r1]).index_select(1, idx).float()

    return gen


def compare(
    result: AttributionResult,
    yardstick: AttributionResult,
    against: str,
    workload: Any = None,
    yardstick_pruned: set[tuple] | None = None,
) -> dict[str, Any]:
    """Parity metrics of ``result`` against ``yardstick``.

    Returns ``{"against", "selected_jaccard", "rel_frobenius", "max_abs", "edge_recall", "pruned_node_jaccard"}``.
    ``workload`` (a spec or built workload) is used to build circuit-tracer ``Graph`` objects for pruning; without
    it an equivalent stand-in is passed to ``prune_graph``. ``yardstick_pruned``: the yardstick's
    :func:`pruned_nodes`, where the caller keeps them for several comparisons (a 70,000-node prune takes ~30 s).
    """
    feats_r = {ident for ident in node_identities(result) if ident[0] == "f"}
    feats_y = {ident for ident in node_identities(yardstick) if ident[0] == "f"}
    idx_r, idx_y = common_nodes(result, yardstick)
    blocks_r = _submatrix_blocks(result.adjacency_matrix, idx_r)
    blocks_y = _submatrix_blocks(yardstick.adjacency_matrix, idx_y)

    # pass 1 over both graphs: the error figures and the first radix-select pass of each graph's top edges
    top_y, top_r = TopHistogram(by_mass=True), TopHistogram(by_mass=False)
    diff_sq = ref_sq = 0.0
    max_abs = 0.0
    for br, by in zip(blocks_r(), blocks_y(), strict=False):
        d = br - by  # float32 products, float64 sums: relative error figures to ~1e-7 of themselves
        diff_sq += float(torch.sum(d * d, dtype=torch.float64))
        ref_sq += float(torch.sum(by * by, dtype=torch.float64))
        if d.numel():
            max_abs = max(max_abs, float(d.abs().max()))
        top_y.add(by)
        top_r.add(br)
    if ref_sq > 0:
        rel = math.sqrt(diff_sq) / math.sqrt(ref_sq)
    else:
        rel = 0.0 if diff_sq == 0 else math.inf

    edge_recall: float | None = None
    if top_y.total > 0:
        # the yardstick's largest edges carrying EDGE_MASS of its |weight| (k of them), the result's k largest
        t_y, k, _ = radix_select(blocks_y, EDGE_MASS * top_y.total, by_mass=True, rel_tol=1e-12, top=top_y)
        t_r, _, _ = radix_select(blocks_r, float(k), by_mass=False, rel_tol=1e-12, top=top_r)
        hits = n_y = 0
        for br, by in zip(blocks_r(), blocks_y(), strict=False):
            in_y = abs_bits(by) >= t_y
            in_r = abs_bits(br) >= t_r
            n_y += int(torch.count_nonzero(in_y))
            hits += int(torch.count_nonzero(in_y & in_r))
        edge_recall = hits / n_y if n_y else 1.0

    return {
        "against": against,
        "selected_jaccard": _jaccard(feats_r, feats_y),
        "rel_frobenius": rel,
        "max_abs": max_abs,
        "edge_recall": edge_recall,
        "pruned_node_jaccard": pruned_node_jaccard(result, yardstick, workload, yardstick_pruned),
    }


class _PruneView:
    """What ``prune_graph`` reads from a Graph, for callers without a workload."""

    def __init__(self, result: AttributionResult):
        self.input_tokens = result.input_tokens
        self.logit_targets = result.logit_token_ids.tolist()
        self.selected_features = result.selected_features
        self.adjacency_matrix = result.adjacency_matrix
        self.logit_probabilities = result.logit_probabilities


def pruned_nodes(result: AttributionResult, workload: Any = None) -> set[tuple]:
    """Identities of the nodes circuit-tracer's ``prune_graph`` (defaults) keeps.

    Up to :data:`MAX_DENSE_PRUNE_NODES` nodes circuit-tracer's own ``prune_graph`` runs (the yardstick); above,
    :func:`attrbench.graph.prune.prune`, which gives the same node mask reading the adjacency in row blocks.
    """
    if result.adjacency_matrix.shape[0] > MAX_DENSE_PRUNE_NODES:
        mask = prune(result, return_edge_mask=False).node_mask
    else:
        from circuit_tracer.graph import prune_graph

        if workload is not None:
            graph = to_circuit_tracer_graph(result, workload)
        else:
            graph = _PruneView(result)
        mask = prune_graph(graph).node_mask
    ids = node_identities(result)
    return {ids[i] for i in torch.nonzero(mask).flatten().tolist()}


def prune_parity_skipped(result: AttributionResult, yardstick: AttributionResult) -> bool:
    """Whether ``ATTRBENCH_LARGE_PRUNE_PARITY=0`` skips the pruned-node Jaccard of these two graphs."""
    too_large = max(result.adjacency_matrix.shape[0], yardstick.adjacency_matrix.shape[0]) > MAX_DENSE_PRUNE_NODES
    return too_large and os.environ.get(LARGE_PRUNE_PARITY_ENV) == "0"


def pruned_node_jaccard(
    result: AttributionResult,
    yardstick: AttributionResult,
    workload: Any = None,
    yardstick_pruned: set[tuple] | None = None,
) -> float | None:
    """Jaccard of the kept node identities after ``prune_graph`` on both graphs (the streaming prune above
    :data:`MAX_DENSE_PRUNE_NODES` nodes); None when pruning fails.

    Above :data:`MAX_DENSE_PRUNE_NODES` nodes ``ATTRBENCH_LARGE_PRUNE_PARITY=0`` skips it (None): each
    streaming prune reads its graph a few times (about 30 s for a 70,000-node graph in the page cache on 2
    cores, much longer from disk). ``yardstick_pruned`` is the yardstick's :func:`pruned_nodes`, if known.
    """
    if prune_parity_skipped(result, yardstick):
        return None
    try:
        with torch.no_grad():
            kept = yardstick_pruned if yardstick_pruned is not None else pruned_nodes(yardstick, workload)
            return _jaccard(pruned_nodes(result, workload), kept)
    except (RuntimeError, ValueError):  # e.g. influence power iteration not converging on a cyclic graph
        return None
