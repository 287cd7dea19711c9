"""Write an attribution result as circuit-tracer's files: the Graph ``.pt`` and the pruned graph JSON.

* :func:`save_graph_pt` writes exactly what ``circuit_tracer.graph.Graph.to_pt`` writes, so
  ``Graph.from_pt`` loads it and ``prune_graph`` runs on it.
* :func:`save_graph_json` writes the JSON that circuit-tracer's local server and Neuronpedia read, as
  ``circuit_tracer.utils.create_graph_files`` writes it (``{metadata, qParams, nodes, links}``, after pruning),
  reusing its ``create_nodes`` and ``build_model``; the pruning is :func:`attrbench.graph.prune.prune_with_edges`,
  which reads the adjacency in row blocks, so graphs too large for ``prune_graph`` can be written too.
  Node ids: feature ``{layer}_{feature}_{pos}``, error ``0_{layer}_{pos}``, token ``E_{token}_{pos}``,
  logit ``{n_layers + 1}_{token}_{pos}``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from attrbench.api import AttributionResult
from attrbench.graph.interop import to_circuit_tracer_graph, tokenizer_for
from attrbench.graph.prune import prune_with_edges


def _atomic_target(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, path.with_name(f".{path.name}.tmp{os.getpid()}")


def save_graph_pt(result: AttributionResult, workload: Any, path: str | os.PathLike) -> Path:
    """Write ``result`` as ``Graph.to_pt`` does (``workload``: a BuiltWorkload or WorkloadSpec); returns the path."""
    path, tmp = _atomic_target(path)
    graph = to_circuit_tracer_graph(result, workload)
    try:
        graph.to_pt(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def graph_json_model(
    result: AttributionResult,
    workload: Any,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    slug: str = "attrbench-graph",
    scan: str | None = None,
    block_rows: int | None = None,
):
    """The ``circuit_tracer.frontend.graph_models.Model`` (metadata, qParams, nodes, links) of the pruned graph."""
    from circuit_tracer.utils.create_graph_files import build_model, create_nodes

    graph = to_circuit_tracer_graph(result, workload)
    pruned, kept_edges = prune_with_edges(
        graph, node_threshold, edge_threshold, block_rows=block_rows, return_edge_mask=False
    )
    tokenizer = tokenizer_for(workload)
    node_mask = pruned.node_mask.cpu()
    # create_nodes iterates node_mask.nonzero().squeeze().tolist(): a single kept node would be an int
    nodes = create_nodes(graph, node_mask, tokenizer, pruned.cumulative_scores.cpu().tolist())

    adj = graph.adjacency_matrix
    links = []
    connected: set[int] = set()
    for dst, src in kept_edges():
        dst, src = dst.cpu(), src.cpu()
        weights = adj[dst, src].float().cpu().tolist() if dst.numel() else []
        for d, s_, w in zip(dst.tolist(), src.tolist(), weights, strict=False):
            links.append({"source": nodes[s_].node_id, "target": nodes[d].node_id, "weight": w})
            connected.add(d)
            connected.add(s_)
    used_nodes = [
        node for idx, node in nodes.items() if idx in connected or node.feature_type in ("embedding", "logit")
    ]
    return build_model(graph, used_nodes, links, slug, scan or graph.scan, node_threshold, tokenizer)


def save_graph_json(
    result: AttributionResult,
    workload: Any,
    path: str | os.PathLike,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    slug: str | None = None,
    scan: str | None = None,
    block_rows: int | None = None,
) -> Path:
    """Write the pruned graph JSON (as ``create_graph_files`` writes ``{slug}.json``); returns the path.

    ``slug`` defaults to the file name without its extension. Only the graph file is written, not the
    ``graph-metadata.json`` index ``create_graph_files`` also updates in its output folder.
    """
    path, tmp = _atomic_target(path)
    slug = slug or path.stem
    model = graph_json_model(
        result, workload, node_threshold, edge_threshold, slug=slug, scan=scan, block_rows=block_rows
    )
    try:
        with open(tmp, "w") as f:
            f.write(model.model_dump_json(indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_graph(result: AttributionResult, workload: Any, path: str | os.PathLike, fmt: str = "pt", **kw: Any) -> Path:
    """:func:`save_graph_pt` (``fmt="pt"``) or :func:`save_graph_json` (``fmt="json"``)."""
    if fmt == "pt":
        return save_graph_pt(result, workload, path)
    if fmt == "json":
        return save_graph_json(result, workload, path, **kw)
    raise ValueError(f"unknown graph format {fmt!r}; use pt or json")


def to_cpu(result: AttributionResult) -> AttributionResult:
    """``result`` with every tensor on the CPU (a no-op copy-free for CPU results)."""
    changes = {
        f.name: getattr(result, f.name).cpu()
        for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor) and getattr(result, f.name).device.type != "cpu"
    }
    return dataclasses.replace(result, **changes) if changes else result
