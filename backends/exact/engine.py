"""circuit-tracer's attribution loop over the hand-differentiated linearised model.

:class:`ExactBackend` reproduces ``circuit_tracer.attribution.attribute`` step for step (logit rows, feature
rows in batches, influence re-ranking every ``update_interval`` batches, packaging into the same node
order) but computes each batch of rows with hand-written VJPs; autograd is never used. Each faster
backend adds its one idea by overriding these hooks, and nothing else:

* causal-trick: :meth:`ExactBackend.position_limit`, :meth:`ExactBackend.order_window`,
  :meth:`ExactBackend.live_rows` (backward only over positions <= the batch's targets, rows joining at
  their own layer);
* gqa-shared: :meth:`ExactBackend.node_layout`, :meth:`ExactBackend.attention_vjp`,
  :meth:`ExactBackend.contract_features` / :meth:`ExactBackend.contract_cross_features`,
  :meth:`ExactBackend.token_edges_at_first_layer`, the
  :attr:`ExactBackend.ranking_rule` and :attr:`ExactBackend.last_window_selected_only` attributes (one V
  GEMM per KV group, GEMMs written straight into the store's rows, token edges from layer 0's values,
  single-pass ranking, the last window over the selected columns);
* approximate-pruned: :meth:`ExactBackend.compute_dtype` (bfloat16 VJPs),
  :meth:`ExactBackend.prune_threshold` (small edges dropped) and :meth:`ExactBackend.ranking_window` (one
  ranking, after the logit rows).

Rows are written in place: the store hands out zeroed rows (``reserve``), the VJP fills them, the store
files them (``commit``). :meth:`ExactBackend.edge_storage` (dense or lean rows) is shared by all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from attrbench.api import AttributeSettings, AttributionResult, Backend
from attrbench.backends.exact.columns import Columns, all_columns, selected_columns
from attrbench.backends.exact.edge_store import DenseEdgeStore, LayeredEdgeStore
from attrbench.backends.exact.flops import row_flop_floor
from attrbench.backends.exact.linearised import (
    LinearisedModel,
    ModelWeights,
    linearise,
    prepare_weights,
    salient_logits,
)
from attrbench.errors import UsageError
from attrbench.fp32_gemm import choose_route, fp32_gemms
from attrbench.memory import dense_fits
from attrbench.workload.build import BuiltWorkload


@dataclass
class Prepared:
    weights: ModelWeights
    token_ids: torch.Tensor
    extra: Any = None


class PhaseTimer:
    """Accumulates wall time per phase, synchronising the device so that GPU work is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.phases: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class TargetBatch:
    """Targets of one backward pass: a gradient ``vectors[i]`` injected at ``(layers[i], positions[i])``.

    Layer ``n_layers`` means the final-norm output (logit targets); any other layer ``l`` means the MLP
    input ``x_l`` (feature targets, injected with their encoder vectors).
    """

    #: int64 on the CPU: the loop's control flow reads these, so that a GPU is never waited for
    layers: torch.Tensor
    positions: torch.Tensor
    vectors: torch.Tensor  # [b, d] on the device
    device_positions: torch.Tensor  # ``positions`` on the device, for indexing there

    @classmethod
    def on(cls, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> TargetBatch:
        """A batch from CPU ``layers`` / ``positions`` and ``vectors`` on the device."""
        return cls(layers, positions, vectors, positions.to(vectors.device))

    def __len__(self) -> int:
        return self.layers.shape[0]


class ExactBackend(Backend):
    """Base of the exact hand-differentiated backends (not registered itself)."""

    exact = True
    option_defaults = {"edge_storage": "auto", "fp32_gemm": "auto"}
    #: "circuit-tracer": rank with its own ``compute_partial_influences``; "streamed": the one-pass equivalent
    ranking_rule = "circuit-tracer"
    #: compute the last window's rows (never ranked) over the selected features' columns only
    last_window_selected_only = False

    # ------------------------------------------------------------------ set-up
    def prepare(self, workload: BuiltWorkload, device: str, dtype: torch.dtype) -> Prepared:
        weights = prepare_weights(workload, device, dtype)
        return Prepared(weights, workload.token_ids, self.prepare_layouts(weights))

    def prepare_layouts(self, weights: ModelWeights) -> Any:
        """Weight layouts built once per workload (hook for gqa-shared)."""
        return None

    def compute_dtype(self, weights: ModelWeights, settings: AttributeSettings) -> torch.dtype:
        """The dtype the VJPs run in (the run's own here; hook for approximate-pruned's bfloat16)."""
        return weights.dtype

    def node_layout(self, model: LinearisedModel, prepared: Prepared) -> Any:
        """Per-prompt node layouts built once per attribution (hook for gqa-shared)."""
        return None

    # ------------------------------------------------------------------ hooks
    def position_limit(self, batch: TargetBatch, n_pos: int) -> int:
        """How many leading positions the backward pass of ``batch`` covers (all of them here)."""
        return n_pos

    def ranking_window(self, settings: AttributeSettings) -> int:
        """How many feature rows are computed between two influence rankings: circuit-tracer's
        ``update_interval`` batches."""
        return settings.update_interval * settings.batch_size

    def order_window(self, model: LinearisedModel, pending: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The order in which one ranking window's features are batched (influence order here)."""
        return pending

    def live_rows(self, batch: TargetBatch, layer: int) -> int:
        """How many leading rows of ``batch`` the VJP must carry at ``layer`` (all of them here).

        Rows whose target lies below ``layer`` still have a zero gradient there; a backend that orders
        each batch by descending target layer can skip them (they form the tail). Rows
        ``[live_rows(layer + 1), live_rows(layer))`` must be exactly those whose target is at ``layer``:
        they join the pass there with a gradient at their own position only.
        """
        return len(batch)

    def attention_vjp(
        self, model: LinearisedModel, prepared: Prepared, layout: Any, layer: int, grad_out: torch.Tensor
    ) -> torch.Tensor:
        """VJP of attention's value/output path with frozen patterns: d(attn_out) -> d(ln1 output).

        One GEMM per query head: every head applies its (shared) V projection separately.
        """
        w = model.weights
        B, P, _ = grad_out.shape
        H, KV, dh = w.n_heads, w.n_kv_heads, w.d_head
        grad_z = (grad_out @ w.W_O[layer]).view(B, P, H, dh)
        pattern = model.patterns[layer, :, :P, :P]  # [H, query, key]
        grad_v = torch.einsum("hij,bihd->bjhd", pattern, grad_z)  # [B, key, H, dh]
        W_V_per_head = w.W_V[layer].repeat_interleave(H // KV, dim=0)  # [H, dh, d]
        return torch.einsum("bjhd,hde->bje", grad_v, W_V_per_head)

    def attention_vjp_at(
        self, model: LinearisedModel, layer: int, vectors: torch.Tensor, positions: torch.Tensor, n_pos: int
    ) -> torch.Tensor:
        """The same VJP for rows whose gradient sits at one query position each (rows joining at ``layer``).

        ``vectors[j]`` at query ``positions[j]`` -> ``[len(vectors), n_pos, d]``. The output projection is
        applied at that one position instead of all ``n_pos`` (the dense path's cost), and the heads of a
        KV group are summed before their shared V projection.
        """
        w = model.weights
        J, KV, dh = len(vectors), w.n_kv_heads, w.d_head
        grad_v = self.attention_values_at(model, layer, vectors, positions, n_pos)
        return (grad_v.view(J * n_pos, KV * dh) @ w.W_V[layer].view(KV * dh, w.d_model)).view(J, n_pos, w.d_model)

    def attention_values_at(
        self, model: LinearisedModel, layer: int, vectors: torch.Tensor, positions: torch.Tensor, n_pos: int
    ) -> torch.Tensor:
        """:meth:`attention_vjp_at` up to the V projection: the gradient at the values, ``[J, n_pos, KV*d_head]``."""
        w = model.weights
        J, KV, dh = len(vectors), w.n_kv_heads, w.d_head
        G = w.n_heads // KV
        grad_z = (vectors @ w.W_O[layer]).view(J, KV, G, dh)
        rows = model.patterns[layer][:, positions, :n_pos]  # [H, J, key]: each row's query pattern
        rows = rows.view(KV, G, J, n_pos).permute(2, 0, 3, 1)  # [J, KV, key, G]
        return torch.matmul(rows, grad_z).permute(0, 2, 1, 3).reshape(J, n_pos, KV * dh)

    def contract_features(
        self,
        model: LinearisedModel,
        prepared: Prepared,
        layout: Any,
        columns: Columns,
        layer: int,
        grad: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """Write ``<grad at mlp_out_layer[pos_s], decoder_s>`` for layer ``layer``'s feature columns into ``out``.

        One GEMM per position: ``grad[:, p] @ decoders(layer, p)^T``.
        """
        bounds = columns.bounds[layer]
        for p in range(grad.shape[1]):
            s, e = bounds[p], bounds[p + 1]
            if e > s:
                out[:, s:e] += grad[:, p] @ columns.decoders[s:e].T

    def contract_cross_features(
        self,
        model: LinearisedModel,
        prepared: Prepared,
        layout: Any,
        columns: Columns,
        layer: int,
        grad: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """Cross-layer transcoders: add ``<grad at mlp_out_layer[pos_s], decoder_{s -> layer}>`` for the
        features of every source layer ``s < layer`` (a feature's edge sums over all its decoders)."""
        for source in range(layer):
            vecs = columns.cross.get((source, layer))
            if vecs is None:
                continue
            bounds, first = columns.bounds[source], columns.layer_start(source)
            for p in range(grad.shape[1]):
                s, e = bounds[p], bounds[p + 1]
                if e > s:
                    out[:, s:e] += grad[:, p] @ vecs[s - first : e - first].T

    def token_edges_at_first_layer(
        self,
        model: LinearisedModel,
        prepared: Prepared,
        layout: Any,
        batch: TargetBatch,
        grad: torch.Tensor,
        reached: int,
        out: torch.Tensor,
    ) -> bool:
        """Write the token edges ``out`` ([len(batch), P]) straight from the gradient above layer 0's MLP
        (``grad``: its first ``reached`` rows in the pass, the rest joining at layer 0), without the gradient
        at the embeddings; True if done (hook for gqa-shared), False to run layer 0's VJP and dot that
        gradient with the token vectors (here)."""
        return False

    def edge_storage(self, model: LinearisedModel, n_rows: int, n_nodes: int, settings: AttributeSettings) -> str:
        """``"dense"`` (circuit-tracer's float32 rows) or ``"lean"`` (the layered store).

        Option ``edge_storage``: ``dense``, ``lean`` or ``auto`` (default: lean when the dense rows, their
        ranking copy and the square adjacency would take more than half of the memory they live in).
        """
        choice = settings.options.get("edge_storage", "auto")
        if choice not in ("auto", "dense", "lean"):
            raise UsageError(f"edge_storage must be auto, dense or lean, got {choice!r}")
        if choice == "auto":
            fits = dense_fits(n_rows, n_nodes, model.n_layers, model.n_pos, model.weights.device)
            choice = "dense" if fits else "lean"
        return str(choice)

    def prune_threshold(self, settings: AttributeSettings) -> float:
        """Entries below this times their row's largest magnitude are dropped from the graph (none here)."""
        return 0.0

    def make_edge_store(self, model: LinearisedModel, n_rows: int, n_nodes: int, settings: AttributeSettings) -> Any:
        """Storage of the edge rows, as :meth:`edge_storage` chooses."""
        device, threshold = model.weights.device, self.prune_threshold(settings)
        if self.edge_storage(model, n_rows, n_nodes, settings) == "lean":
            return LayeredEdgeStore(model, n_rows, n_nodes, device, settings.scratch_dir, threshold)
        return DenseEdgeStore(model, n_rows, n_nodes, device, threshold)

    # ------------------------------------------------------------------ the VJP chain
    def backward_rows(
        self,
        model: LinearisedModel,
        prepared: Prepared,
        layout: Any,
        columns: Columns,
        batch: TargetBatch,
        out: torch.Tensor,
    ) -> None:
        """Fill ``out`` ([len(batch), columns.width], zeros) with the batch's edge rows: one VJP per target."""
        w = model.weights
        n_pos, L = model.n_pos, model.n_layers
        P = self.position_limit(batch, n_pos)
        B = len(batch)
        top = int(batch.layers.max())
        grad = torch.zeros(B, P, w.d_model, dtype=w.dtype, device=w.device)  # d r_{l+1}
        if top == L:  # logit targets sit after the final norm at the last position
            logit = torch.nonzero(batch.layers == L).flatten().to(w.device)
            grad[logit, P - 1] = batch.vectors[logit] * model.final_gain[P - 1]
        tokens = out[:, columns.token_offset : columns.token_offset + P]
        for layer in range(min(top, L - 1), -1, -1):
            reached = self.live_rows(batch, layer + 1)  # rows whose gradient can be non-zero above the MLP
            if layer < top and reached:
                self.contract_features(model, prepared, layout, columns, layer, grad[:reached], out[:reached])
                if columns.cross:
                    self.contract_cross_features(model, prepared, layout, columns, layer, grad[:reached], out[:reached])
                e0 = columns.error_offset + layer * n_pos
                # vecdot, not einsum("bpd,pd->bp"): einsum makes it a batched GEMV, ~3x slower
                out[:reached, e0 : e0 + P] = torch.linalg.vecdot(grad[:reached], model.error_vecs[layer, :P])
            if layer == 0 and self.token_edges_at_first_layer(model, prepared, layout, batch, grad, reached, tokens):
                return
            if reached:
                self._layer_vjp(model, prepared, layout, batch, layer, grad[:reached])
            live = self.live_rows(batch, layer)
            if live > reached:
                self._joining_vjp(model, batch, layer, slice(reached, live), grad[reached:live])
        tokens[:] = torch.linalg.vecdot(grad, model.token_vecs[:P])

    def _layer_vjp(
        self,
        model: LinearisedModel,
        prepared: Prepared,
        layout: Any,
        batch: TargetBatch,
        layer: int,
        g: torch.Tensor,
    ) -> None:
        """``g`` (the batch's leading rows, already in the pass: gradient above ``layer``'s MLP) -> their
        gradient below ``layer``, in place; targets at ``layer`` among them (unordered batches) are injected
        on the way."""
        grad_mid, grad_attn = self.mlp_vjp(model, batch, layer, g)
        grad_ln1 = self.attention_vjp(model, prepared, layout, layer, grad_attn)
        torch.addcmul(grad_mid, grad_ln1, model.ln1_gain[layer, : g.shape[1]], out=g)

    def mlp_vjp(
        self, model: LinearisedModel, batch: TargetBatch, layer: int, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``g`` (gradient above ``layer``'s MLP of the batch's leading rows) -> (gradient at the residual
        after attention, gradient at attention's output), with targets at ``layer`` among those rows injected."""
        w = model.weights
        P = g.shape[1]
        here = torch.nonzero(batch.layers[: len(g)] == layer).flatten().to(w.device)
        at, vectors = (here, batch.device_positions[here]), batch.vectors[here]
        if model.reads_resid_mid:  # cross-layer: skip and features read the residual after attention
            grad_mid = g + g @ w.W_skip[layer] if w.W_skip is not None else g.clone()
            if len(here):
                grad_mid.index_put_(at, vectors, accumulate=True)
        else:
            grad_x = g @ w.W_skip[layer] if w.W_skip is not None else torch.zeros_like(g)
            if len(here):
                grad_x.index_put_(at, vectors, accumulate=True)
            grad_mid = torch.addcmul(g, grad_x, model.ln2_gain[layer, :P])
        # Gemma: the frozen post-attention norm sits between attention and the residual
        grad_attn = grad_mid if model.post_attn_gain is None else grad_mid * model.post_attn_gain[layer, :P]
        return grad_mid, grad_attn

    def _joining_vjp(
        self, model: LinearisedModel, batch: TargetBatch, layer: int, rows: slice, out: torch.Tensor
    ) -> None:
        """Rows whose target is at ``layer`` (zero gradient above it): write their gradient below ``layer``
        into ``out`` (zeros). Their gradient there is their vector at their own position, so neither the
        skip connection nor attention's output projection runs over the other positions."""
        positions = batch.device_positions[rows]
        grad_mid, grad_attn = self.joining_mlp_vjp(model, batch, layer, rows)
        grad_ln1 = self.attention_vjp_at(model, layer, grad_attn, positions, out.shape[1])
        torch.mul(grad_ln1, model.ln1_gain[layer, : out.shape[1]], out=out)
        out.index_put_((torch.arange(len(positions), device=out.device), positions), grad_mid, accumulate=True)

    def joining_mlp_vjp(
        self, model: LinearisedModel, batch: TargetBatch, layer: int, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows joining at ``layer``: (gradient at the residual after attention, at attention's output), each
        one vector at the row's own position (``[len(rows), d]``)."""
        vectors, positions = batch.vectors[rows], batch.device_positions[rows]
        if model.reads_resid_mid:  # cross-layer: the feature reads the residual after attention itself
            grad_mid = vectors
        else:
            grad_mid = vectors * model.ln2_gain[layer, positions]
        grad_attn = grad_mid if model.post_attn_gain is None else grad_mid * model.post_attn_gain[layer, positions]
        return grad_mid, grad_attn

    # ------------------------------------------------------------------ circuit-tracer's loop
    def attribute(self, prepared: Prepared, settings: AttributeSettings) -> AttributionResult:
        """circuit-tracer's attribution, with float32 GEMMs on the kernels option ``fp32_gemm`` picks
        (:func:`attrbench.fp32_gemm.choose_route`: oneDNN's where they are exact and faster on this CPU)."""
        route = choose_route(settings.options.get("fp32_gemm", "auto"), prepared.weights.device, settings.batch_size)
        # no autograd graph; results stay ordinary (not inference-mode) tensors
        with torch.no_grad(), fp32_gemms(route):
            result = self._attribute(prepared, settings)
        result.info["fp32_gemm"] = route
        return result

    def _attribute(self, prepared: Prepared, settings: AttributeSettings) -> AttributionResult:
        timer = PhaseTimer(prepared.weights.device)
        with timer("setup"):
            model = linearise(prepared.weights, prepared.token_ids, self.compute_dtype(prepared.weights, settings))
            targets = salient_logits(model, settings.max_n_logits, settings.desired_logit_prob)
            w = model.weights
            layout = self.node_layout(model, prepared)
        n_active, n_logits, row_size = model.n_active, len(targets.token_ids), model.row_size
        total_nodes = row_size + n_logits
        max_nodes = min(settings.max_feature_nodes or n_active, n_active)
        B = settings.batch_size

        with timer("setup"):
            store = self.make_edge_store(model, max_nodes + n_logits, total_nodes, settings)
            columns = all_columns(model)
        ranks = max_nodes < n_active  # otherwise every feature is a row and nothing is ever ranked

        def compute(batch: TargetBatch, nodes: torch.Tensor, cols: Columns, ranked: bool) -> None:
            rows = store.reserve(len(batch), cols.width, w.device)
            self.backward_rows(model, prepared, layout, cols, batch, rows)
            store.commit(rows, nodes, ranked)

        with timer("logit_rows"):
            for i in range(0, n_logits, B):
                vecs = targets.vectors[i : i + B].to(w.dtype)
                layers = torch.full((len(vecs),), model.n_layers)
                batch = TargetBatch.on(layers, torch.full_like(layers, model.n_pos - 1), vecs)
                compute(batch, torch.arange(i, i + len(vecs)) + row_size, columns, ranks)

        visited = torch.zeros(n_active, dtype=torch.bool)
        n_visited = 0
        while n_visited < max_nodes:
            if not ranks:
                pending = torch.arange(n_active)
            else:
                settings.progress(f"ranking ({n_visited:,}/{max_nodes:,} feature rows done)")
                with timer("ranking"):
                    infl = store.influences(targets.probabilities, self.ranking_rule)
                    rank = torch.argsort(infl[:n_active], descending=True).cpu()
                    queue_size = min(self.ranking_window(settings), max_nodes - n_visited)
                    pending = rank[~visited[rank]][:queue_size]
            last_window = n_visited + len(pending) >= max_nodes
            cols = columns
            if last_window and ranks and self.last_window_selected_only:
                with timer("setup"):
                    chosen = torch.sort(torch.cat([torch.where(visited)[0], pending])).values
                    narrow = selected_columns(model, chosen)
                    if store.restrict(len(pending), narrow):
                        cols = narrow
            with timer("feature_rows"):
                pending = self.order_window(model, pending, B)
                for i in range(0, len(pending), B):
                    idx = pending[i : i + B]
                    vecs = model.encoder_vectors(idx).to(w.dtype)
                    batch = TargetBatch.on(model.active_features[idx, 0], model.active_features[idx, 1], vecs)
                    compute(batch, idx, cols, not last_window)
                    visited[idx] = True
                    n_visited += len(idx)
                    settings.progress(f"feature rows {n_visited:,}/{max_nodes:,}")

        settings.progress(f"packaging the {total_nodes - n_active + max_nodes:,}-node adjacency")
        with timer("packaging"):
            selected = torch.where(visited)[0]
            adjacency = store.package(selected, n_active, n_logits)
            storage = type(store).__name__
        return AttributionResult(
            input_tokens=prepared.token_ids.cpu(),
            logit_token_ids=targets.token_ids,
            logit_probabilities=targets.probabilities.float().cpu(),
            active_features=model.active_features,
            activation_values=model.activation_values.float().cpu(),
            selected_features=selected,
            adjacency_matrix=adjacency,
            n_layers=model.n_layers,
            phases_s=timer.phases,
            info={
                "n_logits": n_logits,
                "flop_floor": flop_floor(model, selected, n_logits),
                "edge_storage": storage,
                "vjp_dtype": str(w.dtype).removeprefix("torch."),
            },
            adjacency_file=getattr(store, "adjacency_file", None),
        )


def flop_floor(model: LinearisedModel, selected: torch.Tensor, n_logits: int) -> float:
    """The FLOP floor of the graph's rows: ``n_logits`` logit rows plus one row per selected feature."""
    layers = torch.cat([torch.full((n_logits,), model.n_layers), model.active_features[selected, 0]])
    positions = torch.cat([torch.full((n_logits,), model.n_pos - 1), model.active_features[selected, 1]])
    return row_flop_floor(model, layers, positions)
