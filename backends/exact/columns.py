"""Which source nodes the columns of an edge row hold.

While features are still being ranked, a row needs a column for every node (ranking reads them all):
:func:`all_columns`, circuit-tracer's order (features by layer, position, feature index; then error nodes
layer-major; then tokens). The rows of the last window are never ranked, and the finished graph keeps only
the selected features' columns, so those rows are computed over :func:`selected_columns` alone: the same
numbers for every column the graph keeps, at a fraction of the contraction and the memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attrbench.backends.exact.linearised import LinearisedModel


@dataclass
class Columns:
    """The feature columns (grouped by layer, then position) followed by error and token columns."""

    #: ``[n_feature_columns, d]``: the (activation-scaled) decoder vector of each feature column
    decoders: torch.Tensor
    #: per layer, column ranges per position: layer ``l``'s columns at position ``p`` are
    #: ``bounds[l][p]:bounds[l][p + 1]``
    bounds: list[list[int]]
    error_offset: int
    token_offset: int
    width: int
    #: cross-layer transcoders: (source layer, output layer) -> ``[columns of the source layer, d]``
    cross: dict = field(default_factory=dict)
    #: the feature index of each feature column, ascending (None: every active feature, in order)
    features: torch.Tensor | None = None

    #: per layer, :meth:`padded` built once
    _padded: dict = field(default_factory=dict, repr=False)

    def layer_start(self, layer: int) -> int:
        return self.bounds[layer][0]

    def padded(self, layer: int) -> PaddedLayer:
        """Layer ``layer``'s decoders padded per position, for one batched GEMM over its positions."""
        if layer not in self._padded:
            self._padded[layer] = PaddedLayer.of(self.decoders, self.bounds[layer])
        return self._padded[layer]


@dataclass
class PaddedLayer:
    """One layer's feature columns laid out for a batched GEMM: a slot per position that has columns.

    Positions without a column get no slot: the last window's selected features crowd a few positions
    (``small``, 4,000 nodes: every layer above the second keeps the last position's features only), and a
    slot per position would multiply the GEMM by up to ``n_pos``.
    """

    #: ``[slots, width, d]``: slot ``i`` holds position ``positions[i]``'s decoders, zeros after them
    decoders: torch.Tensor
    #: the positions that have columns, ascending (on the CPU) and on the decoders' device
    positions: list[int]
    device_positions: torch.Tensor
    #: the flattened ``(slot, offset)`` of each column, in column order
    index: torch.Tensor
    #: ``slots[P]``: how many slots hold positions ``< P``; ``ends[P]``: how many columns sit there
    slots: list[int]
    ends: list[int]

    @classmethod
    def of(cls, decoders: torch.Tensor, bounds: list[int]) -> PaddedLayer:
        counts = [bounds[p + 1] - bounds[p] for p in range(len(bounds) - 1)]
        positions = [p for p, count in enumerate(counts) if count]
        width = max(max(counts, default=0), 1)
        padded = decoders.new_zeros(len(positions), width, decoders.shape[1])
        index: list[int] = []
        for slot, p in enumerate(positions):
            padded[slot, : counts[p]] = decoders[bounds[p] : bounds[p + 1]]
            index.extend(range(slot * width, slot * width + counts[p]))
        slots = [0] + torch.tensor([int(c > 0) for c in counts]).cumsum(0).tolist()
        ends = [0] + torch.tensor(counts).cumsum(0).tolist()
        device = decoders.device
        return cls(
            padded,
            positions,
            torch.tensor(positions, dtype=torch.long, device=device),
            torch.tensor(index, dtype=torch.long, device=device),
            slots,
            ends,
        )

    def gradients(self, grad: torch.Tensor) -> torch.Tensor:
        """``[slots, B, d]``: the gradient ``grad`` ([B, P, d]) at each slot's position below ``P``."""
        k = self.slots[grad.shape[1]]
        first = self.positions[0] if k else 0
        if self.positions[:k] == list(range(first, first + k)):  # consecutive positions: a view, no gather
            return grad[:, first : first + k].transpose(0, 1)
        return grad.index_select(1, self.device_positions[:k]).transpose(0, 1)


def all_columns(model: LinearisedModel) -> Columns:
    """A column for every node of the prompt (circuit-tracer's edge-row layout)."""
    return Columns(
        decoders=model.decoder_vecs,
        bounds=model.position_bounds,
        error_offset=model.error_offset,
        token_offset=model.token_offset,
        width=model.row_size,
        cross=model.cross_decoders,
    )


def selected_columns(model: LinearisedModel, selected: torch.Tensor) -> Columns:
    """Columns for the ``selected`` features (ascending feature indices) only, then errors and tokens."""
    n_sel, n_pos = selected.numel(), model.n_pos
    feats = model.active_features[selected]
    counts = torch.zeros(model.n_layers, n_pos, dtype=torch.long)
    counts.index_put_((feats[:, 0], feats[:, 1]), torch.ones(n_sel, dtype=torch.long), accumulate=True)
    ends = counts.flatten().cumsum(0).view(model.n_layers, n_pos)
    starts = ends - counts
    bounds = [[int(starts[layer, 0])] + ends[layer].tolist() for layer in range(model.n_layers)]
    on_device = selected.to(model.decoder_vecs.device)
    cross = {}
    for (source, out_layer), vecs in model.cross_decoders.items():
        first = model.layer_offsets[source]
        in_source = on_device[(on_device >= first) & (on_device < model.layer_offsets[source + 1])] - first
        cross[(source, out_layer)] = vecs[in_source]
    return Columns(
        decoders=model.decoder_vecs[on_device],
        bounds=bounds,
        error_offset=n_sel,
        token_offset=n_sel + model.n_layers * n_pos,
        width=n_sel + (model.n_layers + 1) * n_pos,
        cross=cross,
        features=selected,
    )
