"""gqa-shared: causal-trick plus one V projection per KV group and GEMM-shaped layouts.

* Attention VJP: the query heads of a KV group share one V projection. Their pattern products are summed
  inside one batched GEMM per group (the group's transposed patterns side by side, ``[key, G * query]``),
  then the group's V projection is applied once, as a single GEMM over all groups.
* Features are contracted per position with one GEMM that BLAS writes straight into the edge rows'
  columns (the store hands out its rows, :meth:`attrbench.backends.exact.edge_store.DenseEdgeStore.reserve`):
  no batch block, no gather, no copy. On a GPU and for bfloat16 rows on a CPU, each layer is one batched
  GEMM over padded positions instead, and a gather (:meth:`GqaSharedBackend.batched_contract`).
* Below layer 0's attention only the token nodes read the gradient: their edges are dotted from the
  gradient at layer 0's values (``KV * d_head`` wide) with the token vectors' V projections, made once per
  prompt (:attr:`NodeLayout.token_values`), so the V GEMM, the norm's element-wise pass and the ``d``-wide
  dot products of that last step are never run (``small``, 4,000 nodes: ~5% of the wall).
* The last window's rows, which are never ranked, are computed over the selected features' columns only
  (:mod:`attrbench.backends.exact.columns`): the graph keeps no other feature column.
* Ranking reads the edge rows once per re-ranking (:func:`attrbench.backends.exact.ranking.streamed_influences`)
  instead of copying them and iterating over the copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrbench.backends.causal_trick import CausalTrickBackend
from attrbench.backends.exact.columns import Columns
from attrbench.backends.exact.engine import Prepared
from attrbench.backends.exact.linearised import LinearisedModel
from attrbench.fp32_gemm import onednn_route_active
from attrbench.hookspecs import hookimpl


@dataclass
class NodeLayout:
    patterns_grouped: torch.Tensor  # [L, KV, key, G, query]
    #: [n_pos, KV*d_head]: layer 0's V projection of each token vector through its frozen input norm. A
    #: token edge is <gradient at the embeddings, token vector>, and that gradient below layer 0's attention
    #: is ``ln1_gain * (grad_values @ W_V)``: dotting ``grad_values`` with these is the same number without the
    #: d_model-wide gradient (one V GEMM, one element-wise pass and one d-wide dot product per batch fewer)
    token_values: torch.Tensor


class GqaSharedBackend(CausalTrickBackend):
    name = "gqa-shared"
    description = (
        "causal-trick + one V GEMM per KV group, GEMMs written straight into the edge rows, single-pass ranking"
    )
    ranking_rule = "streamed"
    last_window_selected_only = True
    #: contract each layer in one batched GEMM over padded positions (None: where it pays, see below)
    batched: bool | None = None

    def batched_contract(self, grad: torch.Tensor) -> bool:
        """One batched GEMM per layer instead of one GEMM per position: on a GPU, where a launch costs more
        than these small GEMMs, and wherever oneDNN runs the GEMMs on a CPU (bfloat16/float16 gradients,
        float32 on its route), since it compiles a kernel for every new GEMM shape (per position: hundreds;
        ``small``, 4,000 nodes, bfloat16: 0.48 -> 0.43 s; float32 on oneDNN, the first pass: 0.53 -> 0.48 s)."""
        if self.batched is not None:
            return self.batched
        onednn = grad.dtype in (torch.bfloat16, torch.float16) or onednn_route_active()
        return grad.device.type == "cuda" or onednn

    def cost_model(self) -> str | None:
        return "vjp-causal-gqa"

    def node_layout(self, model: LinearisedModel, prepared: Prepared) -> NodeLayout:
        w = model.weights
        n, G = model.n_pos, w.n_heads // w.n_kv_heads
        # [L, H, query, key] -> [L, KV, key, G, query]: a group's transposed patterns side by side
        grouped = model.patterns.view(model.n_layers, w.n_kv_heads, G, n, n).permute(0, 1, 4, 2, 3).contiguous()
        normed_tokens = model.ln1_gain[0].float() * model.token_vecs.float()  # [n, d]
        token_values = normed_tokens @ w.W_V[0].reshape(-1, w.d_model).float().T  # [n, KV*dh]
        return NodeLayout(grouped, token_values.to(w.dtype))

    def attention_vjp(self, model, prepared, layout: NodeLayout, layer, grad_out):
        w = model.weights
        B, P, d = grad_out.shape
        grad_v = self.attention_values(model, layout, layer, grad_out)
        return (grad_v @ w.W_V[layer].view(-1, d)).view(B, P, d)  # one GEMM for all groups

    def attention_values(self, model: LinearisedModel, layout: NodeLayout, layer: int, grad_out: torch.Tensor):
        """:meth:`attention_vjp` up to the V projection: the gradient at the values, ``[B * P, KV*d_head]``."""
        w = model.weights
        B, P, d = grad_out.shape
        KV, dh = w.n_kv_heads, w.d_head
        G = w.n_heads // KV
        grad_z = (grad_out.view(B * P, d) @ w.W_O[layer]).view(B, P, KV, G, dh)
        grad_z = grad_z.permute(2, 3, 1, 0, 4).reshape(KV, G * P, B * dh)  # [KV, (G, query), (B, dh)]
        patterns = layout.patterns_grouped[layer, :, :P, :, :P].reshape(KV, P, G * P)
        grad_v = torch.bmm(patterns, grad_z)  # [KV, key, (B, dh)]: the group's heads summed in the GEMM
        return grad_v.view(KV, P, B, dh).permute(2, 1, 0, 3).reshape(B * P, KV * dh)

    def token_edges_at_first_layer(self, model, prepared, layout: NodeLayout, batch, grad, reached, out) -> bool:
        """Token edges from the gradient at layer 0's values (:attr:`NodeLayout.token_values`), never the
        gradient at the embeddings."""
        B, P, _ = grad.shape
        values, tokens = layout.token_values[:P], model.token_vecs[:P]
        if reached:  # rows in the pass: the residual path, plus attention's through the values
            grad_mid, grad_attn = self.mlp_vjp(model, batch, 0, grad[:reached])
            grad_v = self.attention_values(model, layout, 0, grad_attn).view(reached, P, -1)
            out[:reached] = torch.linalg.vecdot(grad_mid, tokens) + torch.linalg.vecdot(grad_v, values)
        live = self.live_rows(batch, 0)
        if live > reached:  # rows joining at layer 0: their own position's token, plus attention's
            rows = slice(reached, live)
            positions = batch.device_positions[rows]
            grad_mid, grad_attn = self.joining_mlp_vjp(model, batch, 0, rows)
            edges = torch.linalg.vecdot(self.attention_values_at(model, 0, grad_attn, positions, P), values)
            own = torch.linalg.vecdot(grad_mid, tokens[positions])
            edges[torch.arange(len(positions), device=edges.device), positions] += own
            out[rows] = edges
        return True

    def contract_features(self, model, prepared, layout: NodeLayout, columns: Columns, layer, grad, out):
        """One GEMM per position whose result is written straight into the rows' columns (no gather, no
        temporary); accumulated where cross-layer decoders have already written there. Or, where
        :meth:`batched_contract` says so, one batched GEMM over padded positions and a gather."""
        bounds = columns.bounds[layer]
        accumulate = bool(columns.cross)
        if self.batched_contract(grad):
            _batched_into(out[:, bounds[0] :], grad, columns, layer, accumulate)
            return
        for p in range(grad.shape[1]):
            s, e = bounds[p], bounds[p + 1]
            if e > s:
                _gemm_into(out[:, s:e], grad[:, p], columns.decoders[s:e].T, accumulate)

    def contract_cross_features(self, model, prepared, layout: NodeLayout, columns: Columns, layer, grad, out):
        for source in range(layer):
            vecs = columns.cross.get((source, layer))
            if vecs is None:
                continue
            bounds, first = columns.bounds[source], columns.layer_start(source)
            for p in range(grad.shape[1]):
                s, e = bounds[p], bounds[p + 1]
                if e > s:
                    _gemm_into(out[:, s:e], grad[:, p], vecs[s - first : e - first].T, accumulate=True)


#: devices where the batched contraction's products reach the rows by one gather, not per-position copies
GATHER_DEVICES = ("cuda",)


def _batched_into(out: torch.Tensor, grad: torch.Tensor, columns: Columns, layer: int, accumulate: bool) -> None:
    """``out[:, :n]`` (= or +=) the layer's columns at positions ``< P``: one bmm over the positions that
    have columns (:class:`attrbench.backends.exact.columns.PaddedLayer`).

    The padded products reach the rows' columns by one gather on a GPU (one launch), and by one strided copy
    per slot on a CPU: there the gather's transposed copy and index cost ~15x more than the copies."""
    layer_columns = columns.padded(layer)
    B, P, _ = grad.shape
    n, k = layer_columns.ends[P], layer_columns.slots[P]
    if not n:
        return
    products = torch.bmm(layer_columns.gradients(grad), layer_columns.decoders[:k].transpose(1, 2))  # [k, B, width]
    if out.device.type in GATHER_DEVICES:
        values = products.transpose(0, 1).reshape(B, -1).index_select(1, layer_columns.index[:n])
        if accumulate:
            out[:, :n] += values
        else:
            out[:, :n] = values
        return
    ends = layer_columns.ends
    for slot, p in enumerate(layer_columns.positions[:k]):
        s, e = ends[p], ends[p + 1]
        if accumulate:
            out[:, s:e] += products[slot, :, : e - s]
        else:
            out[:, s:e] = products[slot, :, : e - s]


def _gemm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """``out = a @ b`` (or ``out += a @ b``) with BLAS writing into ``out``'s strided rows directly (or,
    where the VJP computes in another dtype than the float32 rows, through a converting copy)."""
    if out.dtype != a.dtype:
        if accumulate:
            out += a @ b
        else:
            out.copy_(a @ b)
    elif accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


@hookimpl
def register_backends(register):
    register(GqaSharedBackend())
