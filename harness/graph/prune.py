"""Streaming version of circuit-tracer's ``prune_graph`` for graphs whose adjacency barely fits in memory.

circuit-tracer's ``prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)`` clones the adjacency, builds
two normalised copies and an edge-score matrix, and sorts all N^2 edge scores: at ~63k nodes that is out of
memory. :func:`prune` computes the same node mask and cumulative scores (and, up to
:data:`MAX_EDGE_MASK_NODES` nodes, the same edge mask) reading the adjacency in row blocks only:

* normalisation (``|A| / rowsum``) is done per row block (row sums do not depend on the blocking);
* node influence is circuit-tracer's power series ``x A + x A^2 + ...`` with blockwise vector-matrix
  products (row blocks whose entries of ``x`` are all zero are skipped);
* the node threshold sorts the N influences (N values, cheap) with circuit-tracer's own ``find_threshold``;
* the edge threshold is found by an exact radix select over the float32 bit patterns of the edge scores
  (:func:`radix_select`, two histogram passes of 2^16 bins) that reproduces ``find_threshold``'s
  ``sort descending -> cumsum / sum -> searchsorted(left) -> clamp`` semantics on CPU: the cumulative sum is
  accumulated in float64 and rounded to float32, then divided by the float32 total, as torch does;
* the iterative node-mask clean-up (features and errors need an outgoing kept edge, features an incoming
  one) recomputes the edge scores blockwise in every iteration instead of keeping an N x N mask.

The adjacency may be a read-only tensor over a ``numpy.memmap``; it is never written to and no N x N
temporary is made. The only remaining difference from circuit-tracer is floating-point summation order:
circuit-tracer's float32 ``torch.sum`` of the sorted edge scores can differ from the correctly rounded total
used here by an ulp, and its dense ``x @ A`` from the blockwise product by a few ulps. Either moves the edge
threshold only when edge scores lie within those ulps of it (on large graphs a handful of near-threshold
edges at most); graphs that fit in one row block get bit-identical influences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

#: above this many nodes :func:`prune` returns ``edge_mask=None`` (a dense bool mask is N^2 bytes)
MAX_EDGE_MASK_NODES = 20_000
#: elements per row block of the adjacency (64 MiB of float32; a block costs about 5x that while scoring)
BLOCK_ELEMENTS = 1 << 24
#: circuit-tracer's ``compute_influence`` limit
MAX_ITER = 1000

_HALF = 16
_BINS = 1 << _HALF


class StreamingPruneResult(NamedTuple):
    node_mask: torch.Tensor  # bool [N]
    edge_mask: torch.Tensor | None  # bool [N, N] ([target, source]), None above MAX_EDGE_MASK_NODES nodes
    cumulative_scores: torch.Tensor  # float32 [N]


# ---------------------------------------------------------------------------------------------------------------
# radix select over float32 bit patterns (also used by attrbench.graph.parity for its top-edge selection)


def abs_bits(block: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of ``|block|``, flattened; for non-negative floats they order like the values."""
    return block.abs().contiguous().view(torch.int32).flatten()


#: elements radix_select histograms at once (its float64 and int32 temporaries stay below ~30 MiB)
RADIX_CHUNK = 1 << 20


def _block_chunks(block: torch.Tensor) -> Iterator[torch.Tensor]:
    """One block, flattened, in pieces of at most RADIX_CHUNK elements."""
    flat = block.reshape(-1)
    for c in range(0, flat.numel(), RADIX_CHUNK):
        yield flat[c : c + RADIX_CHUNK]


def _chunks(blocks: Callable[[], Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
    for block in blocks():
        yield from _block_chunks(block)


class TopHistogram:
    """Histogram of ``|values|`` by the high 16 bits of their float32 bit patterns: the first pass of
    :func:`radix_select`. Several histograms can be filled in one pass over the data (see
    :func:`attrbench.graph.parity.compare`)."""

    def __init__(self, by_mass: bool):
        self.by_mass = by_mass
        self.count = torch.zeros(_BINS, dtype=torch.float64)
        self.mass = torch.zeros(_BINS, dtype=torch.float64)

    def add(self, block: torch.Tensor) -> None:
        """Count the elements of one float32 block (any shape)."""
        for chunk in _block_chunks(block):
            magnitude = chunk.abs()
            hi = magnitude.view(torch.int32) >> _HALF  # what abs_bits gives, without a second abs
            self.count += torch.bincount(hi, minlength=_BINS).double()
            if self.by_mass:
                self.mass += torch.bincount(hi, weights=magnitude.double(), minlength=_BINS)

    @property
    def total(self) -> float:
        """The mass (``by_mass``) or the count of all elements seen."""
        return float((self.mass if self.by_mass else self.count).sum())


def radix_select(
    blocks: Callable[[], Iterator[torch.Tensor]],
    need: float | Callable[[float, float], float],
    by_mass: bool,
    rel_tol: float = 0.0,
    top: TopHistogram | None = None,
) -> tuple[int, int, float]:
    """The largest bit pattern ``t`` such that the elements of ``|blocks|`` with bits >= t reach ``need``.

    ``blocks`` is a re-iterable generator of float32 blocks (two passes are made; one when ``top`` already
    holds their first-pass :class:`TopHistogram`). With ``by_mass`` ``need``
    is an amount of ``|value|`` (summed in float64), otherwise a count of elements. ``need`` may be a callable
    ``need(total_mass, total_count)`` evaluated after the first pass. ``need`` is lowered by the relative
    ``rel_tol`` before the search (a guard against summation-order rounding). When ``need`` is more than the
    total, the search stops at the lowest bin (t = 0). Returns ``(t, count of elements with bits >= t,
    total)`` where total is the mass (``by_mass``) or the count of all elements.

    For ``need > 0`` and ``by_mass``, ``t`` is the bit pattern of the element ``v`` with
    ``mass(> v) < need <= mass(>= v)``: the element at which a descending sort's cumulative sum first
    reaches ``need``.
    """
    if top is None:
        top = TopHistogram(by_mass)
        for block in blocks():
            top.add(block)
    elif top.by_mass != by_mass:
        raise ValueError("the first-pass histogram was made with another by_mass")
    hi_count, hi_mass = top.count, top.mass
    total_mass, total_count = float(hi_mass.sum()), float(hi_count.sum())
    if callable(need):
        need = need(total_mass, total_count)
    need = float(need)
    weights_hi = hi_mass if by_mass else hi_count
    rev = torch.flip(weights_hi, [0]).cumsum(0)  # cumulative from the top bin down
    target = torch.tensor([need * (1 - rel_tol)], dtype=torch.float64)
    pos = min(int(torch.searchsorted(rev, target).item()), _BINS - 1)
    h = _BINS - 1 - pos
    above = float(rev[pos - 1]) if pos > 0 else 0.0
    count_above = float(torch.flip(hi_count, [0])[:pos].sum()) if pos > 0 else 0.0
    remaining = need - above
    lo_count = torch.zeros(_BINS, dtype=torch.float64)
    lo_mass = torch.zeros(_BINS, dtype=torch.float64)
    for block in _chunks(blocks):
        bits = abs_bits(block)
        sel = (bits >> _HALF) == h
        if not bool(sel.any()):
            continue
        lo = bits[sel] & (_BINS - 1)
        lo_count += torch.bincount(lo, minlength=_BINS).double()
        if by_mass:
            lo_mass += torch.bincount(lo, weights=block.abs().flatten()[sel].double(), minlength=_BINS)
        del bits, sel, lo
    weights_lo = lo_mass if by_mass else lo_count
    rev_lo = torch.flip(weights_lo, [0]).cumsum(0)
    target_lo = torch.tensor([remaining * (1 - rel_tol) if rel_tol else remaining], dtype=torch.float64)
    pos_lo = min(int(torch.searchsorted(rev_lo, target_lo).item()), _BINS - 1)
    low = _BINS - 1 - pos_lo
    count = count_above + float(torch.flip(lo_count, [0])[: pos_lo + 1].sum())
    return (h << _HALF) | low, int(count), total_mass if by_mass else total_count


def _bits_to_float(bits: int) -> float:
    return float(np.array([bits], dtype=np.int32).view(np.float32)[0])


def cumsum_need(total: float, threshold: float) -> float:
    """The smallest float64 prefix sum P with ``f32(f32(P) / f32(total)) >= f32(threshold)``.

    That is the condition ``torch.searchsorted(cumsum(sorted) / sum(sorted), threshold)`` tests for a
    float32 tensor on CPU (``cumsum`` accumulates in float64 and rounds each prefix to float32; the threshold
    is a wrapped scalar, so it is compared as float32). Returns ``inf`` when no prefix can reach it.
    """
    t32 = np.float32(total)
    c32 = np.float32(threshold)
    if t32 <= 0 or not np.isfinite(t32):
        return 0.0

    def ok(a: np.float32) -> bool:
        return bool(np.float32(a) / t32 >= c32)

    a = np.float32(float(c32) * float(t32))
    with np.errstate(over="ignore"):
        while a > 0 and ok(np.nextafter(a, np.float32(0))):
            a = np.nextafter(a, np.float32(0))
        while not ok(a):
            a = np.nextafter(a, np.float32(np.inf))
            if not np.isfinite(a):
                return float("inf")
    if a <= 0:
        return 0.0
    prev = np.nextafter(a, np.float32(0))
    mid = (float(prev) + float(a)) / 2  # exact in float64
    even = int(np.array([a], dtype=np.float32).view(np.int32)[0]) % 2 == 0
    return mid if even else float(np.nextafter(mid, np.inf))  # round half to even


# ---------------------------------------------------------------------------------------------------------------
# the prune


def _parts(graph: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(adjacency, logit probabilities, n_tokens, n_features) of a Graph, AttributionResult or look-alike."""
    adj = graph.adjacency_matrix
    probs = graph.logit_probabilities
    if not isinstance(probs, torch.Tensor):
        probs = torch.as_tensor(probs)
    if hasattr(graph, "logit_targets") and len(graph.logit_targets) != probs.numel():
        raise ValueError("logit_targets and logit_probabilities differ in length")
    return adj, probs, len(graph.input_tokens), len(graph.selected_features)


class _Scorer:
    """Row blocks of the normalised (optionally node-masked) adjacency, computed on demand."""

    def __init__(self, adj: torch.Tensor, block_rows: int, keep: torch.Tensor | None = None):
        self.adj = adj
        self.n = adj.shape[0]
        self.block_rows = block_rows
        self.keep = keep  # None: the adjacency as is; else rows and columns of dropped nodes are zero
        self.drop_cols = torch.zeros(0, dtype=torch.bool) if keep is None else ~keep
        self._rowsum: dict[int, torch.Tensor] = {}
        self._has_edges: dict[int, torch.Tensor] = {}

    def ranges(self) -> Iterator[tuple[int, int]]:
        for r0 in range(0, self.n, self.block_rows):
            yield r0, min(self.n, r0 + self.block_rows)

    def abs_block(self, r0: int, r1: int) -> torch.Tensor:
        block = self.adj[r0:r1]
        block = block.abs() if block.dtype == torch.float32 else block.float().abs()  # a copy: never in place
        if self.keep is not None:
            block.masked_fill_(self.drop_cols[None, :], 0.0)
            block.masked_fill_(~self.keep[r0:r1, None], 0.0)
        return block

    def rowsum(self, r0: int, r1: int) -> torch.Tensor:
        """Row sums of |rows r0:r1| (masked), clamped like ``normalize_matrix``; ``[r1 - r0, 1]``, cached."""
        rowsum = self._rowsum.get(r0)
        if rowsum is None:
            raw = self.abs_block(r0, r1).sum(dim=1, keepdim=True)
            self._has_edges[r0] = raw[:, 0] > 0
            rowsum = self._rowsum[r0] = raw.clamp(min=1e-10)
        return rowsum

    def _abs_rows(self, r0: int, r1: int, rows: torch.Tensor | None) -> torch.Tensor:
        """|adjacency| of rows ``r0 + rows`` (all of r0:r1 when None), columns of dropped nodes zeroed; the rows
        given must be kept ones."""
        if rows is None:
            return self.abs_block(r0, r1)
        block = self.adj[r0:r1].index_select(0, rows)  # a copy
        block = block.abs_() if block.dtype == torch.float32 else block.float().abs_()
        if self.keep is not None:
            block.masked_fill_(self.drop_cols[None, :], 0.0)
        return block

    def normalized(self, r0: int, r1: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """circuit-tracer's ``normalize_matrix`` on rows r0:r1 (or ``r0 + rows``); bit-identical to it, as row
        sums do not depend on the blocking."""
        rowsum = self.rowsum(r0, r1)
        block = self._abs_rows(r0, r1, rows)
        return block.div_(rowsum if rows is None else rowsum[rows])

    def kept_rows(self, r0: int, r1: int, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Local indices of the rows of r0:r1 in ``mask`` (default: the kept ones); None for all rows."""
        mask = self.keep if mask is None else mask
        if mask is None:
            return None
        rows = torch.nonzero(mask[r0:r1]).flatten()
        return None if rows.numel() == r1 - r0 else rows

    def vecmat(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ normalized`` blockwise; one block is the same dense product circuit-tracer computes.

        With several blocks only the rows where ``x`` is non-zero are read, as ``(x / rowsum) @ |rows|``, and
        the columns of dropped nodes are zeroed in the product instead of in the matrix.
        """
        if self.block_rows >= self.n:
            return x @ self.normalized(0, self.n)
        out = torch.zeros(self.n, dtype=torch.float64, device=x.device)
        for r0, r1 in self.ranges():
            push = self._push(r0, r1, x[r0:r1])
            if push is not None:
                out += push
        if self.keep is not None:
            out.masked_fill_(self.drop_cols, 0.0)
        return out.to(x.dtype)

    def _push(self, r0: int, r1: int, xs: torch.Tensor) -> torch.Tensor | None:
        """``(xs / rowsum) @ |rows r0:r1|`` in float64, reading only the rows where ``xs`` is non-zero (the
        columns of dropped nodes are not zeroed here); None when ``xs`` is all zero."""
        rows = torch.nonzero(xs).flatten()
        if rows.numel() == 0:
            return None
        if rows.numel() == r1 - r0:
            w = xs / self.rowsum(r0, r1)[:, 0]
            block = self.adj[r0:r1]
            block = block.abs() if block.dtype == torch.float32 else block.float().abs()
        else:
            w = xs[rows] / self.rowsum(r0, r1)[rows, 0]
            block = self.adj[r0:r1].index_select(0, rows)
            block = block.abs_() if block.dtype == torch.float32 else block.float().abs_()
        return (w.to(block.dtype) @ block).double()

    def influence(self, logit_weights: torch.Tensor, max_iter: int = MAX_ITER) -> torch.Tensor:
        """circuit-tracer's ``compute_influence`` power series: in one pass over the rows where the graph is
        layered and spans several row blocks (:meth:`layered_influence`), else as circuit-tracer iterates."""
        if self.block_rows < self.n:
            layered = self.layered_influence(logit_weights)
            if layered is not None:
                return layered
        current = self.vecmat(logit_weights)
        influence = current.clone()
        iterations = 0
        while current.any():
            if iterations >= max_iter:
                raise RuntimeError(f"Influence computation failed to converge after {iterations} iterations")
            current = self.vecmat(current)
            influence += current
            iterations += 1
        return influence

    def layered_influence(self, logit_weights: torch.Tensor) -> torch.Tensor | None:
        """The power series ``sum_k w A^k`` (``A`` normalised) in one pass, last row block first.

        The weight reaching a row is final once every row after it has pushed its own through its edges,
        which holds when no row has an edge from a row after it that has edges itself: circuit-tracer's node
        order (features by layer, then errors and tokens, which have no incoming edges, then logits). Edges
        between rows of one block are followed by pushing the block again with what it received. Each power
        series iteration reads (nearly) the whole adjacency, ~n_layers + 2 times; this reads it once. Returns
        None, having changed nothing, when an edge breaks that order.
        """
        pending = logit_weights.to(torch.float64, copy=True)  # weight that reached each row, not yet pushed
        total = torch.zeros(self.n, dtype=torch.float64, device=logit_weights.device)
        closed = torch.zeros(self.n, dtype=torch.bool, device=logit_weights.device)  # pushed rows with edges
        for r0, r1 in reversed(list(self.ranges())):
            for _ in range(MAX_ITER):
                push = self._push(r0, r1, pending[r0:r1])
                if push is None:
                    break
                if self.keep is not None:
                    push.masked_fill_(self.drop_cols, 0.0)
                if bool((push[r1:] != 0).logical_and_(closed[r1:]).any()):
                    return None  # an edge into a row that has already pushed its weight
                pending[r0:r1] = 0
                pending += push
                total += push
            else:
                return None  # a cycle within the block: the power series reports it
            closed[r0:r1] = self.has_edges(r0, r1)
        return total.to(logit_weights.dtype)

    def has_edges(self, r0: int, r1: int) -> torch.Tensor:
        """Which rows of r0:r1 have an edge (after the node mask); cached with the row sums."""
        self.rowsum(r0, r1)
        return self._has_edges[r0]


def _cumulative_scores(node_influence: torch.Tensor) -> torch.Tensor:
    sorted_scores, sorted_indices = torch.sort(node_influence, descending=True)
    cumulative = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores)
    final = torch.zeros_like(node_influence)
    final[sorted_indices] = cumulative
    return final


def default_block_rows(n: int) -> int:
    return max(2, min(n, BLOCK_ELEMENTS // max(1, n)))


def prune(
    graph: Any,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    block_rows: int | None = None,
    return_edge_mask: bool | None = None,
) -> StreamingPruneResult:
    """circuit-tracer's ``prune_graph`` without N x N temporaries.

    Returns ``(node_mask, edge_mask, cumulative_scores)``.

    ``graph`` is a ``circuit_tracer.graph.Graph``, an :class:`attrbench.api.AttributionResult` or anything with
    ``adjacency_matrix`` (``[target, source]``, possibly a read-only memory-mapped tensor), ``input_tokens``,
    ``selected_features`` and ``logit_probabilities``. ``block_rows`` sets the rows per block (default: about
    :data:`BLOCK_ELEMENTS` elements). The edge mask is returned densely only for graphs of at most
    :data:`MAX_EDGE_MASK_NODES` nodes (or as ``return_edge_mask`` says); otherwise it is None.
    """
    return prune_with_edges(
        graph, node_threshold, edge_threshold, block_rows=block_rows, return_edge_mask=return_edge_mask
    )[0]


class _EdgePruner:
    """The edge half of ``prune_graph`` over the node-pruned matrix, one row block at a time."""

    def __init__(
        self,
        adj: torch.Tensor,
        block_rows: int,
        kept: torch.Tensor,
        logit_weights: torch.Tensor,
        return_edge_mask: bool,
    ):
        self.n = adj.shape[0]
        self.device = adj.device
        self.pruned = _Scorer(adj, block_rows, keep=kept)
        self.kept = kept
        self.influence = self.pruned.influence(logit_weights) + logit_weights
        self.threshold = 0.0
        self.dense_mask = (
            torch.zeros(self.n, self.n, dtype=torch.bool, device=self.device) if return_edge_mask else None
        )

    def score_rows(self, r0: int, r1: int, rows: torch.Tensor | None) -> torch.Tensor:
        """Edge scores (``normalized_pruned * pruned_influence[:, None]``) of rows r0 + rows (r0:r1 when None)."""
        infl = self.influence[r0:r1] if rows is None else self.influence[r0 + rows]
        return self.pruned.normalized(r0, r1, rows).mul_(infl[:, None])

    def score_blocks(self) -> Iterator[torch.Tensor]:
        """The scores of kept rows (dropped rows score zero everywhere and add no mass)."""
        for r0, r1 in self.pruned.ranges():
            rows = self.pruned.kept_rows(r0, r1)
            if rows is None or rows.numel():
                yield self.score_rows(r0, r1, rows)

    def find_edge_threshold(self, edge_threshold: float) -> None:
        """The score ``find_threshold(edge_scores.flatten(), edge_threshold)`` returns, by radix selection."""
        need_holder: dict[str, float] = {}

        def need(total: float, _count: float) -> float:
            p = cumsum_need(total, edge_threshold)
            need_holder["need"], need_holder["total"] = p, total
            return max(p, 5e-324)  # need <= 0: the first (largest) score

        t_bits, _, total = radix_select(self.score_blocks, need, by_mass=True)
        if total <= 0:
            self.threshold = 0.0  # every score is zero: find_threshold returns 0
        elif need_holder["need"] > total:  # clamped to the last sorted element: the smallest score
            self.threshold = 0.0 if not bool(self.kept.all()) else min(float(b.min()) for b in self.score_blocks())
        else:
            self.threshold = _bits_to_float(t_bits)
        self.threshold_t = torch.tensor(self.threshold, dtype=torch.float32, device=self.device)

    def _block_edges(self, r0: int, r1: int, rows: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """The kept-edge mask of one block's rows (from the stored base mask once it is complete)."""
        dense = self.dense_mask
        if dense is not None and mask is not None:
            return dense[r0:r1] if rows is None else dense[r0 + rows]  # stored base mask
        edges = self.score_rows(r0, r1, rows) >= self.threshold_t
        if dense is not None:
            if rows is None:
                dense[r0:r1] = edges
            else:
                dense[r0 + rows] = edges
        return edges

    def sweep(self, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(any kept edge out of each source, any kept edge into each target) of base & mask mask^T."""
        out_any = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        in_any = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        skip_dropped_rows = self.threshold > 0  # dropped rows have all-zero scores, so no edge at all
        for r0, r1 in self.pruned.ranges():
            if mask is not None:
                rows = self.pruned.kept_rows(r0, r1, mask)
            elif skip_dropped_rows:
                rows = self.pruned.kept_rows(r0, r1)
            else:
                rows = None
            if rows is not None and rows.numel() == 0:
                continue
            edges = self._block_edges(r0, r1, rows, mask)
            if mask is not None:
                edges = edges & mask[None, :]  # rows are already the masked ones
            out_any |= edges.any(0)
            if rows is None:
                in_any[r0:r1] = edges.any(1)
            else:
                in_any[r0 + rows] = edges.any(1)
        return out_any, in_any

    def clean_up(self, node_mask: torch.Tensor, n_fe: int, n_features: int) -> None:
        """circuit-tracer's iterative clean-up of ``node_mask`` (in place), recomputing edge masks blockwise."""
        old_mask = node_mask.clone()
        out_any, in_any = self.sweep(None)
        node_mask[:n_fe] &= out_any[:n_fe]
        node_mask[:n_features] &= in_any[:n_features]
        looped = False
        while not torch.equal(node_mask, old_mask):
            looped = True
            old_mask = node_mask.clone()
            out_any, in_any = self.sweep(old_mask)
            node_mask[:n_fe] &= out_any[:n_fe]
            node_mask[:n_features] &= in_any[:n_features]
        if self.dense_mask is not None and looped:
            self.dense_mask[~node_mask] = False
            self.dense_mask[:, ~node_mask] = False

    def kept_edges(self, node_mask: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Kept edges between kept nodes, ``(targets, sources)`` per row block, row-major."""
        with torch.no_grad():
            for r0, r1 in self.pruned.ranges():
                rows = torch.nonzero(node_mask[r0:r1]).flatten()
                if rows.numel() == 0:
                    continue
                edges = (self.score_rows(r0, r1, rows) >= self.threshold_t) & node_mask[None, :]
                dst, src = edges.nonzero(as_tuple=True)
                if dst.numel():
                    yield rows[dst] + r0, src


def prune_with_edges(
    graph: Any,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    block_rows: int | None = None,
    return_edge_mask: bool | None = None,
) -> tuple[StreamingPruneResult, Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]]:
    """:func:`prune` plus a re-iterable generator of the kept edges between kept nodes, row block by row
    block: ``(targets, sources)`` index tensors in row-major (target, then source) order, as
    ``edge_mask.nonzero()`` orders them. Made for writing graph files of any size."""
    from circuit_tracer.graph import find_threshold  # imported on use: circuit_tracer costs seconds to import

    if node_threshold > 1.0 or node_threshold < 0.0:
        raise ValueError("node_threshold must be between 0.0 and 1.0")
    if edge_threshold > 1.0 or edge_threshold < 0.0:
        raise ValueError("edge_threshold must be between 0.0 and 1.0")
    adj, probs, n_tokens, n_features = _parts(graph)
    n = adj.shape[0]
    if adj.ndim != 2 or adj.shape[1] != n:
        raise ValueError(f"adjacency must be square, got {tuple(adj.shape)}")
    n_logits = probs.numel()
    block_rows = max(1, min(n, block_rows or default_block_rows(n)))
    if return_edge_mask is None:
        return_edge_mask = n <= MAX_EDGE_MASK_NODES

    with torch.no_grad():
        logit_weights = torch.zeros(n, device=adj.device)
        logit_weights[-n_logits:] = probs.to(device=adj.device, dtype=logit_weights.dtype)
        # node influence and the node threshold (N values: circuit-tracer's own find_threshold)
        node_influence = _Scorer(adj, block_rows).influence(logit_weights)
        node_mask = node_influence >= find_threshold(node_influence, node_threshold)
        node_mask[-n_logits - n_tokens :] = True

        edges = _EdgePruner(adj, block_rows, node_mask.clone(), logit_weights, return_edge_mask)
        edges.find_edge_threshold(edge_threshold)
        edges.clean_up(node_mask, n - n_logits - n_tokens, n_features)
        result = StreamingPruneResult(node_mask, edges.dense_mask, _cumulative_scores(node_influence))
        return result, lambda: edges.kept_edges(node_mask)
