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

    #: per layer, :meth:`padded` built once
    _padded: dict = field(default_factory=dict, repr=False)

    def layer_start(self, layer: int) -> int:
        return self.bounds[layer][0]

    def padded(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Layer ``layer``'s decoders padded per position, for one batched GEMM over positions.

        Returns ``decoders [n_pos, width, d]`` (position ``p``'s columns first, zeros after), ``index``
        (the flattened ``(position, slot)`` of each real column, in column order) and ``ends`` (``ends[P]``:
        how many of the layer's columns sit at positions ``< P``).
        """
        if layer not in self._padded:
            bounds = self.bounds[layer]
            counts = [bounds[p + 1] - bounds[p] for p in range(len(bounds) - 1)]
            width = max(max(counts, default=0), 1)
            dec = self.decoders.new_zeros(len(counts), width, self.decoders.shape[1])
            index: list[int] = []
            for p, count in enumerate(counts):
                dec[p, :count] = self.decoders[bounds[p] : bounds[p + 1]]
                index.extend(range(p * width, p * width + count))
            ends = [0] + torch.tensor(counts).cumsum(0).tolist()
            self._padded[layer] = (dec, torch.tensor(index, dtype=torch.long, device=dec.device), ends)
        return self._padded[layer]


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
    )
