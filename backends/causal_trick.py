"""causal-trick: autodiff-free plus backward passes only over the positions a batch can reach.

A target at position p has zero gradient at positions > p (attention is causal) and a target at layer l
none above l, so a batch's backward pass runs over positions ``<= max(position)`` from its top layer down,
and contracts only with the nodes there. Within one ranking window the order in which the chosen
features are visited does not change the graph, so each window is batched by position (the early batches
are short), and each batch is ordered by descending target layer, so that a row joins the backward pass
only at its own layer (the rows still above their target are the batch's zero tail, never computed).
Which features are selected stays exactly circuit-tracer's.
"""

from __future__ import annotations

import torch

from attrbench.backends.autodiff_free import AutodiffFreeBackend
from attrbench.backends.exact.engine import TargetBatch
from attrbench.backends.exact.linearised import LinearisedModel
from attrbench.hookspecs import hookimpl


class CausalTrickBackend(AutodiffFreeBackend):
    name = "causal-trick"
    description = (
        "autodiff-free + backward only through positions <= the batch's targets, windows batched by position/layer"
    )
    yardstick: int | None = None

    def cost_model(self) -> str | None:
        return "vjp-causal"

    def position_limit(self, batch: TargetBatch, n_pos: int) -> int:
        return int(batch.positions.max()) + 1

    def order_window(self, model: LinearisedModel, pending: torch.Tensor, batch_size: int) -> torch.Tensor:
        layer, position = model.active_features[pending, 0], model.active_features[pending, 1]
        pending = pending[torch.sort(position * model.n_layers + layer, stable=True).indices]
        # within each batch, top layer first: rows join the backward pass at their own layer
        chunks = [
            c[torch.sort(model.active_features[c, 0], descending=True, stable=True).indices]
            for c in pending.split(batch_size)
        ]
        return torch.cat(chunks) if chunks else pending

    def live_rows(self, batch: TargetBatch, layer: int) -> int:
        return int((batch.layers >= layer).sum())


@hookimpl
def register_backends(register):
    register(CausalTrickBackend())
