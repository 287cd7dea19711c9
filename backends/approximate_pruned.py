"""approximate-pruned: gqa-shared plus edge pruning and sparse edge storage.

As each batch of rows is produced, entries below ``approx_threshold`` times the row's largest magnitude
are dropped and only the kept entries are stored (:class:`attrbench.backends.exact.edge_store.PrunedEdgeStore`;
for graphs too large for that, the lean layered store with the dropped entries zeroed).
Re-ranking and packaging then work on the kept entries instead of a dense ``[rows, nodes]`` matrix, which
saves both their time and most of the edge memory. The graph diverges slightly from circuit-tracer's: the
runner's parity (``edge_recall``, ``pruned_node_jaccard``, ``selected_jaccard``, ``rel_frobenius``)
measures by how much.
"""

from __future__ import annotations

from attrbench.api import AttributeSettings
from attrbench.backends.exact.edge_store import LayeredEdgeStore, PrunedEdgeStore
from attrbench.backends.gqa_shared import GqaSharedBackend
from attrbench.errors import UsageError
from attrbench.hookspecs import hookimpl

DEFAULT_THRESHOLD = 1e-3


class ApproximatePrunedBackend(GqaSharedBackend):
    name = "approximate-pruned"
    exact = False
    description = "gqa-shared + edges below approx_threshold x row max dropped, sparse edge storage"
    option_defaults = {"approx_threshold": DEFAULT_THRESHOLD, "edge_storage": "auto"}

    def cost_model(self) -> str | None:
        return "vjp-causal-gqa-pruned"

    def make_edge_store(self, model, n_rows, n_nodes, settings: AttributeSettings):
        threshold = settings.options.get("approx_threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise UsageError(f"approx_threshold must be a number in [0, 1), got {threshold!r}")
        if self.edge_storage(model, n_rows, n_nodes, settings) == "lean":
            # too large for coordinate lists in memory: the layered layout with the small entries zeroed
            return LayeredEdgeStore(
                model, n_rows, n_nodes, model.weights.device, settings.scratch_dir, prune_threshold=float(threshold)
            )
        return PrunedEdgeStore(n_rows, n_nodes, model.weights.device, float(threshold))

    def attribute(self, prepared, settings):
        result = super().attribute(prepared, settings)
        result.info["approx_threshold"] = settings.options.get("approx_threshold", DEFAULT_THRESHOLD)
        return result


@hookimpl
def register_backends(register):
    register(ApproximatePrunedBackend())
