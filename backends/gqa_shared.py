"""gqa-shared: causal-trick plus one V projection per KV group and GEMM-shaped layouts.

* Attention VJP: the query heads of a KV group share one V projection. Their pattern products are summed
  inside one batched GEMM per group (the group's transposed patterns side by side, ``[key, G * query]``),
  then the group's V projection is applied once, as a single GEMM over all groups.
* Features are contracted per position with one batched GEMM over a padded ``[pos, d, max_features]``
  decoder layout built once per prompt, instead of gathering gradients per feature.
* Ranking reads the edge rows once per re-ranking (:func:`attrbench.backends.exact.ranking.streamed_influences`)
  instead of copying them and iterating over the copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attrbench.backends.causal_trick import CausalTrickBackend
from attrbench.backends.exact.engine import Prepared
from attrbench.backends.exact.linearised import LinearisedModel, ModelWeights
from attrbench.hookspecs import hookimpl


@dataclass
class GroupedWeights:
    W_V: torch.Tensor  # [L, KV * d_head, d]: v_proj.weight, used as the right factor of one GEMM


@dataclass
class NodeLayout:
    """Per layer: decoder vectors padded per position, ``[n_pos, d, max_count]``, and where each lands."""

    decoders: list[torch.Tensor]
    slots: list[torch.Tensor]  # [n_features_in_layer] index into the flattened [n_pos, max_count]
    position_ends: list[list[int]]  # features of the layer at positions < p: position_ends[p]
    patterns_grouped: torch.Tensor  # [L, KV, key, G, query]
    #: cross-layer transcoders: (source, output layer) -> the source layer's padded decoders into that layer
    cross: dict = field(default_factory=dict)


class GqaSharedBackend(CausalTrickBackend):
    name = "gqa-shared"
    description = "causal-trick + one V GEMM per KV group, pre-transposed GEMM layouts, single-pass ranking"
    ranking_rule = "streamed"

    def cost_model(self) -> str | None:
        return "vjp-causal-gqa"

    def prepare_layouts(self, weights: ModelWeights) -> GroupedWeights:
        return GroupedWeights(W_V=weights.W_V.flatten(1, 2).contiguous())

    def node_layout(self, model: LinearisedModel, prepared: Prepared) -> NodeLayout:
        w = model.weights
        n = model.n_pos
        decoders, slots, ends = [], [], []
        for layer in range(model.n_layers):
            start, stop = model.layer_offsets[layer], model.layer_offsets[layer + 1]
            pos = model.active_features[start:stop, 1]
            counts = torch.bincount(pos, minlength=n)
            first = torch.cumsum(counts, 0) - counts
            rank_in_pos = torch.arange(stop - start) - first[pos]
            width = max(1, int(counts.max()) if stop > start else 1)
            padded = torch.zeros(n * width, w.d_model, dtype=w.dtype, device=w.device)
            slot = (pos * width + rank_in_pos).to(w.device)
            padded[slot] = model.decoder_vecs[start:stop]
            decoders.append(padded.view(n, width, w.d_model).transpose(1, 2).contiguous())
            slots.append(slot)
            ends.append(torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]).tolist())
        cross = {}
        for (source, out_layer), vecs in model.cross_decoders.items():
            width = decoders[source].shape[-1]
            padded = torch.zeros(n * width, w.d_model, dtype=w.dtype, device=w.device)
            padded[slots[source]] = vecs
            cross[(source, out_layer)] = padded.view(n, width, w.d_model).transpose(1, 2).contiguous()
        G = w.n_heads // w.n_kv_heads
        # [L, H, query, key] -> [L, KV, key, G, query]: a group's transposed patterns side by side
        grouped = model.patterns.view(model.n_layers, w.n_kv_heads, G, n, n).permute(0, 1, 4, 2, 3).contiguous()
        return NodeLayout(decoders, slots, ends, grouped, cross)

    def attention_vjp(self, model, prepared, layout: NodeLayout, layer, grad_out):
        w = model.weights
        B, P, d = grad_out.shape
        KV, dh = w.n_kv_heads, w.d_head
        G = w.n_heads // KV
        grad_z = (grad_out.view(B * P, d) @ w.W_O[layer]).view(B, P, KV, G, dh)
        grad_z = grad_z.permute(2, 3, 1, 0, 4).reshape(KV, G * P, B * dh)  # [KV, (G, query), (B, dh)]
        patterns = layout.patterns_grouped[layer, :, :P, :, :P].reshape(KV, P, G * P)
        grad_v = torch.bmm(patterns, grad_z)  # [KV, key, (B, dh)]: the group's heads summed in the GEMM
        grad_v = grad_v.view(KV, P, B, dh).permute(2, 1, 0, 3).reshape(B * P, KV * dh)
        return (grad_v @ prepared.extra.W_V[layer]).view(B, P, d)

    def contract_features(self, model, prepared, layout: NodeLayout, layer, grad, out):
        P = grad.shape[1]
        start = model.layer_offsets[layer]
        n_here = layout.position_ends[layer][P]
        if n_here == 0:
            return
        decoders = layout.decoders[layer][:P]  # [P, d, width]
        scores = torch.bmm(grad.transpose(0, 1), decoders)  # [P, B, width]
        flat = scores.transpose(0, 1).reshape(grad.shape[0], -1)  # [B, P * width]
        out[:, start : start + n_here] += flat[:, layout.slots[layer][:n_here]]

    def contract_cross_features(self, model, prepared, layout: NodeLayout, layer, grad, out):
        P = grad.shape[1]
        for source in range(layer):
            decoders = layout.cross.get((source, layer))
            n_here = layout.position_ends[source][P]
            if decoders is None or n_here == 0:
                continue
            start = model.layer_offsets[source]
            scores = torch.bmm(grad.transpose(0, 1), decoders[:P])  # [P, B, width]
            flat = scores.transpose(0, 1).reshape(grad.shape[0], -1)
            out[:, start : start + n_here] += flat[:, layout.slots[source][:n_here]]


@hookimpl
def register_backends(register):
    register(GqaSharedBackend())
