"""Where the exact engine keeps edge rows while it computes them, ranks from them and packages them.

:class:`DenseEdgeStore` is circuit-tracer's layout: one dense float32 row per computed target over every
node (approximate-pruned: small entries pruned from the graph). :class:`LayeredEdgeStore`
keeps each row's reachable columns only, for graphs too large for the dense rows.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from attrbench.allocator import release_free_memory
from attrbench.backends.exact import ranking, zeroed
from attrbench.backends.exact.columns import Columns

#: rows packaged per block, so that packaging never holds a second full copy of the edge rows
PACKAGE_BLOCK_ROWS = 4096
#: rows pruned at once: small temporaries, which the allocator reuses instead of mapping fresh pages
PRUNE_BLOCK_ROWS = 64


class BlockStore:
    """Stores that take finished blocks: the engine writes each batch into a reused zeroed scratch block
    (:meth:`reserve`) and the store files it (:meth:`commit`, which calls ``append``).

    Edge rows are float32 whatever dtype the VJPs compute in (approximate-pruned: bfloat16): the VJP's
    results are converted as they are written, and every later pass (ranking, pruning, packaging) reads
    float32, which the CPU's reductions and copies handle ~3x faster than bfloat16. (The lean store's last
    window, written straight to the graph file, is the exception: see :meth:`LayeredEdgeStore.reserve`.)"""

    _scratch: torch.Tensor | None = None

    def append(self, block: torch.Tensor, nodes: torch.Tensor) -> None:
        raise NotImplementedError

    def reserve(self, count: int, width: int, device: torch.device) -> torch.Tensor:
        """A zeroed float32 ``[count, width]`` block for the engine to write a batch of rows into."""
        scratch = self._scratch
        if scratch is None or scratch.shape[0] < count or scratch.shape[1] < width:
            scratch = self._scratch = torch.empty(count, width, dtype=torch.float32, device=device)
        rows = scratch[:count, :width]
        return rows.zero_()

    def commit(self, rows: torch.Tensor, nodes: torch.Tensor, ranked: bool) -> None:
        """File the rows written into :meth:`reserve`'s block, for target ``nodes``."""
        self.append(rows, nodes)

    def restrict(self, n_rows: int, columns: Columns) -> bool:
        """Keep the next ``n_rows`` rows (the last window's, never ranked) over ``columns`` only."""
        return False


class DenseEdgeStore(BlockStore):
    """Dense ``[rows, nodes]`` float32 edge rows (circuit-tracer's layout), the row-node map and each ranked
    row's ``|.|`` sum.

    The engine writes rows straight into it (:meth:`reserve` returns a view of the next rows), so a batch is
    never copied. After :meth:`restrict` (the last window's rows, over the selected features' columns: see
    :mod:`attrbench.backends.exact.columns`), the graph's nodes are final: on the CPU each batch then goes
    straight to its rows of the square adjacency, through a reused block, so those rows are neither held
    twice nor written into fresh memory twice (page faults cost ~1.2 us per 4 KiB here). On a GPU they go
    to a second, narrower matrix on the device, copied to the host at packaging.
    """

    def __init__(self, model, n_rows: int, n_nodes: int, device: torch.device, prune_threshold: float = 0.0):
        self.n_nodes, self.n_logits = n_nodes, n_nodes - model.row_size
        self.layer_offsets = torch.tensor(model.layer_offsets)  # first feature of each layer, then n_active
        self.prune_threshold = prune_threshold  # approximate-pruned: entries below this x row max dropped
        # per target layer (logits: n_layers), the columns a full row can have edges in
        self.column_ranges = _column_ranges(model)
        self.edges = zeroed.zeros((n_rows, n_nodes), torch.float32, device)
        self.row_nodes = torch.zeros(n_rows, dtype=torch.long)
        self.row_sums = torch.zeros(n_rows, dtype=torch.float32, device=device)
        self.n_filled = 0
        self.selected: torch.Tensor | None = None  # the graph's features, once restrict() has fixed them
        self._reaches: list[int] = []  # per layer (logits: n_layers), the selected features below it
        self.adjacency: torch.Tensor | None = None  # on the CPU after restrict(): the graph, filled as it goes
        self.narrow: torch.Tensor | None = None  # on a GPU after restrict(): [rows, selected + errors + tokens]
        self.narrow_nodes = torch.zeros(0, dtype=torch.long)
        self.n_narrow = 0
        self._staging: torch.Tensor | None = None  # page-locked host block that packaging copies through

    def reserve(self, count: int, width: int, device: torch.device) -> torch.Tensor:
        if self.adjacency is not None:
            return super().reserve(count, width, device)
        if self.narrow is not None:
            return self.narrow[self.n_narrow : self.n_narrow + count, :width]
        return self.edges[self.n_filled : self.n_filled + count, :width]

    def commit(self, rows: torch.Tensor, nodes: torch.Tensor, ranked: bool) -> None:
        count = rows.shape[0]
        if self.adjacency is not None:
            self._copy_to_graph(rows, nodes)
            return
        if self.narrow is not None:
            self.narrow_nodes[self.n_narrow : self.n_narrow + count] = nodes
            self.n_narrow += count
            return
        start, stop = self.n_filled, self.n_filled + count
        target = self.edges[start:stop, : rows.shape[1]]
        if rows.data_ptr() != target.data_ptr():  # written elsewhere (append)
            target.copy_(rows)
        if ranked:
            self.row_sums[start:stop] = self._l1_norms(target, nodes)
        self.row_nodes[start:stop] = nodes
        self.n_filled = stop

    def append(self, block: torch.Tensor, nodes: torch.Tensor) -> None:
        """Store ``block`` (``[b, row_size]``, row_size <= nodes) as the next rows, for target ``nodes``."""
        self.commit(block, nodes, ranked=True)

    def _target_layers(self, nodes: torch.Tensor) -> torch.Tensor:
        """The layer of each target node (logits: ``n_layers``)."""
        return torch.searchsorted(self.layer_offsets, nodes, right=True) - 1

    def _l1_norms(self, rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Each row's L1 norm, read over the columns its target can reach only: every other entry is zero,
        and reading store pages the VJP never wrote would fault each one in (``small``, 4,000 nodes: 63,000
        faults and 43 ms per run). Batches ordered by target layer are read layer group by layer group;
        unordered ones (rows of several layers interleaved) whole."""
        layers = self._target_layers(nodes)
        sums = torch.zeros(rows.shape[0], dtype=rows.dtype, device=rows.device)
        for layer, here in _by_layer(rows, layers):
            first, count = int(here[0]), len(here)
            if int(here[-1]) - first + 1 != count:
                return torch.linalg.vector_norm(rows, 1, dim=1)
            for start, stop in self.column_ranges[layer]:
                if stop > start:
                    sums[first : first + count] += torch.linalg.vector_norm(
                        rows[first : first + count, start:stop], 1, dim=1
                    )
        return sums

    def restrict(self, n_rows: int, columns: Columns) -> bool:
        assert columns.features is not None, "the last window's columns are the selected features'"
        self._select(columns.features)
        if self.last_window_to_adjacency():
            n = columns.width + self.n_logits
            self.adjacency = zeroed.zeros((n, n), torch.float32, torch.device("cpu"))
        else:
            self.narrow = zeroed.zeros((n_rows, columns.width), torch.float32, self.edges.device)
            self.narrow_nodes = torch.zeros(n_rows, dtype=torch.long)
        return True

    def last_window_to_adjacency(self) -> bool:
        """Whether the last window's rows go straight to the host adjacency (on the CPU) or to a narrow
        matrix on the device, copied to the host at packaging (on a GPU)."""
        return self.edges.device.type == "cpu"

    def influences(self, logit_probabilities: torch.Tensor, rule: str) -> torch.Tensor:
        """Node influences from the rows so far, by circuit-tracer's function or the one-pass equivalent."""
        rows = slice(0, self.n_filled)
        if rule == "circuit-tracer":
            return ranking.circuit_tracer_influences(self.edges[rows], logit_probabilities, self.row_nodes[rows])
        layers = self._target_layers(self.row_nodes[rows])

        def reach(first: int, stop: int) -> list[tuple[int, int]]:  # each layer's ranges hold those below
            return self.column_ranges[int(layers[first:stop].max())]

        on_cpu = self.edges.device.type == "cpu"  # a GPU's memory has no unwritten pages to fault in
        return ranking.streamed_influences(
            self.edges[rows],
            logit_probabilities,
            self.row_nodes[rows],
            self.row_sums[rows],
            reach=reach if on_cpu else None,
        )

    def package(self, selected: torch.Tensor, n_active: int, n_logits: int) -> torch.Tensor:
        """circuit-tracer's square adjacency: rows and columns in node order, only selected features kept."""
        assert self.selected is None or torch.equal(selected, self.selected), "the graph's features changed"
        self._select(selected)
        n = selected.numel() + self.n_nodes - n_active
        if self.adjacency is None:
            self.adjacency = zeroed.zeros((n, n), torch.float32, torch.device("cpu"))
        cols = torch.cat([selected, torch.arange(n_active, self.n_nodes)]).to(self.edges.device)
        # per target layer, the graph columns a row can have edges in (the rest are zero: never read)
        in_reach = []
        for ranges in self.column_ranges:
            inside = torch.zeros_like(cols, dtype=torch.bool)
            for a, b in ranges:
                inside |= (cols >= a) & (cols < b)
            in_reach.append(torch.nonzero(inside).flatten())
        layers = self._target_layers(self.row_nodes[: self.n_filled])
        block = self.edges.new_empty(min(PRUNE_BLOCK_ROWS, self.n_filled), n)  # reused
        for s in range(0, self.n_filled, PRUNE_BLOCK_ROWS):
            stop = min(s + PRUNE_BLOCK_ROWS, self.n_filled)
            reach = in_reach[int(layers[s:stop].max())]
            part = block[: stop - s].zero_()
            part[:, reach] = self.edges[s:stop].index_select(1, cols[reach])
            self._copy_to_graph(part, self.row_nodes[s:stop])
        if self.narrow is not None:
            step = PACKAGE_BLOCK_ROWS // 4  # a GPU's narrow rows: a [step, n] temporary the allocator reuses
            for s in range(0, self.n_narrow, step):
                stop = min(s + step, self.n_narrow)
                self._copy_to_graph(self.narrow[s:stop], self.narrow_nodes[s:stop])
        adjacency = self.adjacency
        self.edges = self.edges.new_empty(0)  # freed: the rows are in the adjacency now
        self.narrow = self.adjacency = None
        return adjacency

    def _select(self, selected: torch.Tensor) -> None:
        """Fix the graph's features (ascending), and how many of them sit below each layer."""
        self.selected = selected
        self._reaches = torch.searchsorted(selected, self.layer_offsets).tolist()

    def _copy_to_graph(self, rows: torch.Tensor, nodes: torch.Tensor) -> None:
        """Prune ``rows`` (changed in place: a block of the store's, or a temporary) and copy them to their
        rows of the adjacency: features by feature index among the selected, logits last.

        A feature's edges come from features of lower layers only: a row has none in the columns of its own
        layer's features and above. The rows are copied layer by layer without those all-zero stretches, so
        the fresh adjacency gets no pages there (``small``, 4,000 nodes: two thirds of the selected features
        sit in the first layer, whose rows are zero but for the error and token columns)."""
        assert self.adjacency is not None and self.selected is not None
        n_sel = self.selected.numel()
        n_active = int(self.layer_offsets[-1])
        destination = _graph_rows(nodes, self.selected, n_active, self.n_nodes, self.adjacency.shape[0])
        layers = self._target_layers(nodes)
        for layer, here in _by_layer(rows, layers):
            part = _rows(rows, here)
            stretches = (part[:, : self._reaches[layer]], part[:, n_sel:])  # every other column is zero
            if self.prune_threshold:
                for s in range(0, part.shape[0], PRUNE_BLOCK_ROWS):
                    block = (stretch[s : s + PRUNE_BLOCK_ROWS] for stretch in stretches)
                    prune_rows_(*block, threshold=self.prune_threshold)
            rows_here = destination[here.to(destination.device)]
            for first, stretch in zip((0, n_sel), stretches, strict=True):
                self.adjacency[:, first : first + stretch.shape[1]].index_copy_(0, rows_here, self._to_host(stretch))

    def _to_host(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` on the CPU, from a GPU through one reused page-locked block: copied at the link's speed,
        not through pageable bounce buffers (qwen3-4b, 10,000 nodes, H200: 0.1 s against 0.45 s)."""
        if rows.device.type == "cpu":
            return rows
        staging = self._staging
        if staging is None or staging.shape[0] < rows.shape[0] or staging.shape[1] < rows.shape[1]:
            staging = self._staging = torch.empty(rows.shape, dtype=torch.float32, pin_memory=True)
        host = staging[: rows.shape[0], : rows.shape[1]]
        host.copy_(rows)
        return host


def prune_rows_(rows: torch.Tensor, *more: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero, in place, the entries of each row below ``threshold`` x the row's largest magnitude; the rows
    may continue in ``more`` (the same rows' other columns), pruned alike. Meant for a few rows at a time:
    it holds an ``|rows|`` temporary."""
    parts = [p for p in (rows, *more) if p.shape[1]]
    if not parts or not parts[0].shape[0]:
        return rows
    magnitudes = [p.abs() for p in parts]
    largest = torch.stack([m.amax(1) for m in magnitudes]).amax(0, keepdim=True).T.mul_(threshold)
    for part, magnitude in zip(parts, magnitudes, strict=True):
        part.masked_fill_(magnitude < largest, 0)
    return rows


class LayeredEdgeStore(BlockStore):
    """Lean storage for large graphs: each row keeps only the columns its target can reach.

    A row whose target sits at layer ``l`` (logits: ``l = n_layers``) has non-zero edges only from features
    and error nodes of layers below ``l`` and from tokens; features are numbered layer by layer, so those
    columns are a prefix of the feature range plus a prefix of the error range. Rows are kept per target
    layer at that width, about half of a dense row on average, as magnitudes plus packed sign bits (ranking
    reads only magnitudes, so it needs no temporary copy). The last window's rows, never ranked and computed
    over the selected columns only (:meth:`restrict`), are not kept: the graph's nodes are final by then, so
    each batch goes from one reused block straight to the graph file (approximate-pruned, whose rows are
    all the last window's, 70,000 nodes: peak RSS 5.0 -> 2.4 GiB, 1.0 M fewer page faults, 13.3 -> 12.4 s).

    Ranking is one pass over the rows in topological order (top layer first), which gives the same
    influences as circuit-tracer's power iteration. Packaging writes the ranked rows into the square
    adjacency's ``.npy`` file row block by row block, so it never exists twice in memory (or once: it is
    memory-mapped back).
    """

    def __init__(
        self,
        model,
        n_rows: int,
        n_nodes: int,
        device: torch.device,
        scratch_dir: str | None,
        prune_threshold: float = 0.0,
    ):
        self.prune_threshold = prune_threshold  # approximate-pruned: zero entries below this x row max
        self.n_layers, self.n_pos = model.n_layers, model.n_pos
        self.n_active = model.n_active
        self.n_nodes = n_nodes
        self.device = device
        self.scratch_dir = scratch_dir
        self.node_layer = torch.cat(
            [model.active_features[:, 0], torch.full((n_nodes - model.n_active,), self.n_layers)]
        )
        # each node's position (logits: the last); a target at position p is reached by nothing after p
        self.active_pos = model.active_features[:, 1]
        self.node_pos = torch.cat([self.active_pos, torch.full((n_nodes - model.n_active,), self.n_pos - 1)])
        # per target layer: the column ranges of a full row it keeps (features and errors of the layers below,
        # tokens), and those columns as one index (ranking adds into them)
        self.column_ranges = _column_ranges(model)
        self.columns = [torch.cat([torch.arange(a, b) for a, b in ranges]).to(device) for ranges in self.column_ranges]
        self.feature_prefix = list(model.layer_offsets)
        self.rows: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers + 1)]  # |edges|
        self.signs: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers + 1)]  # packed sign bits
        self.nodes: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers + 1)]
        self.sums: list[list[torch.Tensor]] = [[] for _ in range(self.n_layers + 1)]
        # after restrict(): the block the rows that follow are written into (never ranked: written to the graph
        # file as they are), in the VJPs' dtype: bfloat16 products hold nothing more in float32. Cross-layer
        # rows are summed over several decoders, so they are summed in float32.
        self.narrow_dtype = model.weights.dtype if not model.cross_decoders else torch.float32
        self.narrow: Columns | None = None
        self._narrow_scratch: torch.Tensor | None = None
        self._graph: _GraphFile | None = None
        self.row_nodes = torch.zeros(n_rows, dtype=torch.long)
        self.n_filled = 0

    def restrict(self, n_rows: int, columns: Columns) -> bool:
        """The next rows (never ranked) come over ``columns``: the selected features, errors and tokens. The
        graph's nodes are final from here, so its file is opened now and each of those batches is written
        to it as it comes (:meth:`append`), never held."""
        assert columns.features is not None, "the last window's columns are the selected features'"
        self.narrow = columns
        self._open_graph(columns.features)
        return True

    def reserve(self, count: int, width: int, device: torch.device) -> torch.Tensor:
        """After :meth:`restrict`, a zeroed block in the VJPs' dtype (reused: each batch is written to the
        graph file before the next is computed)."""
        if self.narrow is None:
            return super().reserve(count, width, device)
        scratch = self._narrow_scratch
        if scratch is None or scratch.shape[0] < count or scratch.shape[1] < width:
            scratch = self._narrow_scratch = torch.empty(count, width, dtype=self.narrow_dtype, device=device)
        return scratch[:count, :width].zero_()

    def append(self, block: torch.Tensor, nodes: torch.Tensor) -> None:
        layers = self.node_layer[nodes]
        if self.narrow is not None:
            for layer, here in _by_layer(block, layers):
                self._write_rows(layer, _rows(block, here), None, nodes[here.cpu()])
        else:
            self._append_ranked(block, nodes, layers)
        self.row_nodes[self.n_filled : self.n_filled + len(nodes)] = nodes
        self.n_filled += len(nodes)

    def _append_ranked(self, block: torch.Tensor, nodes: torch.Tensor, layers: torch.Tensor) -> None:
        """Rows that ranking will read: magnitudes, sign bits and ``|.|`` sums."""
        sums = torch.linalg.vector_norm(block, 1, dim=1)  # no |block| temporary
        for layer, here in _by_layer(block, layers):
            rows = self._kept(block, here, self.column_ranges[layer])
            self.signs[layer].append(_pack_bits(rows < 0))
            self.rows[layer].append(rows.abs_())  # ranking reads |edges|; signs come back at packaging
            self.nodes[layer].append(nodes[here.cpu()])
            self.sums[layer].append(sums[here])

    def _kept(self, block: torch.Tensor, here: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
        """Rows ``here`` of ``block`` over the column ``ranges`` (one new tensor)."""
        rows = _rows(block, here)
        return torch.cat([rows[:, a:b] for a, b in ranges], dim=1)

    def influences(self, logit_probabilities: torch.Tensor, rule: str = "streamed") -> torch.Tensor:
        """circuit-tracer's partial influences by back-substitution, top layer first (one pass)."""
        infl = torch.zeros(self.n_nodes, dtype=torch.float32, device=self.device)
        first_logit = self.n_nodes - logit_probabilities.numel()
        probs = logit_probabilities.to(self.device, torch.float32)
        for layer in range(self.n_layers, -1, -1):
            for rows, nodes, sums in zip(self.rows[layer], self.nodes[layer], self.sums[layer], strict=False):
                nodes = nodes.to(self.device)
                # total weight of the row = its own logit probability + everything flowing into its node
                x = infl[nodes] + torch.where(nodes >= first_logit, probs[(nodes - first_logit).clamp(min=0)], 0.0)
                weights = x / sums.clamp(min=1e-8)
                infl[self.columns[layer]] += weights @ rows
        return infl

    def _open_graph(self, selected: torch.Tensor) -> None:
        """Create the graph's ``.npy`` file (square, over ``selected`` features, errors, tokens, logits): its
        header now, its rows as they are written. Removed again if the store is dropped before packaging."""
        import os
        import tempfile
        import weakref

        import numpy as np

        if self._graph is not None:
            return
        n = selected.numel() + self.n_nodes - self.n_active
        folder = self.scratch_dir or tempfile.gettempdir()
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="adjacency-", suffix=".npy", dir=folder)
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n, n)})
        os.pwrite(fd, header.getvalue(), 0)
        self._graph = _GraphFile(
            fd=fd,
            path=path,
            data_start=len(header.getvalue()),
            n=n,
            selected=selected,
            # per target position, per source layer: the range of ``selected`` it can reach
            reach=_selected_reach(selected, self.active_pos, self.feature_prefix, self.n_layers, self.n_pos),
            cleanup=weakref.finalize(self, _discard, fd, path),
        )

    def _write_rows(self, layer: int, part: torch.Tensor, packed: torch.Tensor | None, nodes: torch.Tensor) -> None:
        """Write one block of rows whose targets (``nodes``) sit at ``layer`` into the graph file: ranked rows
        (``packed`` signs: magnitudes over every reachable feature, then errors, tokens) or last-window rows
        (``packed`` None: signed, in the selected columns' layout: features, errors, tokens).

        Only each row's reachable ranges are written: per source layer, the selected features at positions up
        to the target's own, then its error and token columns. The rest of the file (features after the
        target's position, of its own and higher layers, error and token rows) is left as holes, which read
        as zeros. A few rows at a time, each source layer's reachable features only: the signed copies of
        ranked rows, the gathers of their selected columns, the float32 copies of 16-bit rows and the prune's
        temporaries stay small enough for the allocator to reuse."""
        import os

        graph = self._graph
        assert graph is not None
        L, n_pos = self.n_layers, self.n_pos
        selected, reach = graph.selected, graph.reach
        n_sel = selected.numel()
        nodes = nodes.cpu()
        destinations = _graph_rows(nodes, selected, self.n_active, self.n_nodes, graph.n).tolist()
        target_pos = self.node_pos[nodes].tolist()
        n_feat = self.feature_prefix[layer]
        columns = selected[: int(torch.searchsorted(selected, n_feat))]  # selected features below this layer
        narrow_tail = (self.narrow.error_offset, self.narrow.token_offset) if self.narrow is not None else (0, 0)
        row_bytes = 4 * graph.n
        for s in range(0, part.shape[0], PRUNE_BLOCK_ROWS):
            count = min(PRUNE_BLOCK_ROWS, part.shape[0] - s)
            chunk_reach = reach[max(target_pos[s : s + count])][:layer]
            rows = part[s : s + count]
            if packed is not None:
                # signs restored by a multiply: boolean-mask indexing spent most of packaging in nonzero()
                signs = _unpack_bits(packed[s : s + count], rows.shape[1]).to(rows.dtype).mul_(-2).add_(1)
                rows = (rows * signs).cpu()
                parts = [rows.index_select(1, columns[a:b]) for a, b in chunk_reach]
                errors, tokens = n_feat, n_feat + layer * n_pos
            else:
                rows = rows.cpu()
                parts = [rows[:, a:b].float() for a, b in chunk_reach]  # float32 rows: views
                errors, tokens = narrow_tail
            tails = torch.zeros(count, (L + 1) * n_pos, dtype=torch.float32)
            tails[:, : layer * n_pos] = rows[:, errors : errors + layer * n_pos]
            tails[:, L * n_pos :] = rows[:, tokens : tokens + n_pos]
            if self.prune_threshold:  # over the graph's columns, as the dense store prunes
                prune_rows_(tails, *parts, threshold=self.prune_threshold)
            arrays, tail = [p.numpy() for p in parts], tails.numpy()
            for i in range(count):
                offset = graph.data_start + destinations[s + i] * row_bytes
                row_reach = reach[target_pos[s + i]]
                for source in range(layer):  # each source layer's reachable selected features
                    a, b = row_reach[source]
                    if b > a:
                        # one positioned write each: no seek, no buffer flush (half the calls)
                        row = arrays[source][i, a - chunk_reach[source][0] : b - chunk_reach[source][0]]
                        os.pwrite(graph.fd, row.data, offset + 4 * a)
                os.pwrite(graph.fd, tail[i].data, offset + 4 * n_sel)

    def package(self, selected: torch.Tensor, n_active: int, n_logits: int) -> torch.Tensor:
        import os
        import warnings

        import numpy as np

        self._open_graph(selected)
        graph = self._graph
        assert graph is not None and torch.equal(graph.selected, selected), "the graph's features changed"
        for layer in range(self.n_layers + 1):  # the ranked rows; the last window's are written already
            blocks = list(zip(self.rows[layer], self.signs[layer], self.nodes[layer], strict=True))
            self.rows[layer], self.signs[layer] = [], []
            while blocks:  # each block freed once written
                part, packed, nodes = blocks.pop(0)
                self._write_rows(layer, part, packed, nodes)
            release_free_memory()  # the layer's blocks: for the page cache this file goes through
        os.ftruncate(graph.fd, graph.data_start + graph.n * 4 * graph.n)
        graph.cleanup.detach()
        os.close(graph.fd)
        self.adjacency_file = graph.path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memmap: never written to
            return torch.from_numpy(np.load(graph.path, mmap_mode="r"))


@dataclass
class _GraphFile:
    """The lean store's open graph file."""

    fd: int
    path: str
    data_start: int
    n: int
    selected: torch.Tensor
    reach: list[list[tuple[int, int]]]
    cleanup: Any


def _discard(fd: int, path: str) -> None:
    """Close and remove a graph file that was never packaged (an attribution that failed)."""
    import contextlib
    import os

    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)


def _graph_rows(nodes: torch.Tensor, selected: torch.Tensor, n_active: int, n_nodes: int, n_graph: int) -> torch.Tensor:
    """The graph row of each target node, a selected feature (below ``n_active``) or a logit (the last nodes
    of both numberings: ``n_nodes`` in the rows', ``n_graph`` in the graph's): features by their rank among
    ``selected``, logits last."""
    return torch.where(nodes >= n_active, nodes - n_nodes + n_graph, torch.searchsorted(selected, nodes))


def _by_layer(block: torch.Tensor, layers: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """Each target layer of a block and its rows (indices on the block's device)."""
    for layer in layers.unique().tolist():
        yield layer, (layers == layer).nonzero().flatten().to(block.device)


def _rows(block: torch.Tensor, here: torch.Tensor) -> torch.Tensor:
    """Rows ``here`` of ``block``: a view where they are consecutive (batches ordered by target layer)."""
    first, count = int(here[0]), len(here)
    if int(here[-1]) - first + 1 == count:
        return block[first : first + count]
    return block.index_select(0, here)


def _column_ranges(model) -> list[list[tuple[int, int]]]:
    """Per target layer (logits: ``n_layers``), the column ranges of a full row that can hold edges: the
    features of the layers below, their error nodes, and the tokens."""
    e0, t0, n_pos = model.error_offset, model.token_offset, model.n_pos
    return [
        [(0, model.layer_offsets[layer]), (e0, e0 + layer * n_pos), (t0, t0 + n_pos)]
        for layer in range(model.n_layers + 1)
    ]


def _selected_reach(
    selected: torch.Tensor, feature_pos: torch.Tensor, layer_offsets: list[int], n_layers: int, n_pos: int
) -> list[list[tuple[int, int]]]:
    """``reach[p][l]``: the range of ``selected`` (ascending feature indices, features ordered by layer then
    position) that holds layer ``l``'s selected features at positions ``<= p``."""
    starts = torch.searchsorted(selected, torch.tensor(layer_offsets[:n_layers]))
    stops = torch.searchsorted(selected, torch.tensor(layer_offsets[1 : n_layers + 1]))
    reach = torch.zeros(n_pos, n_layers, 2, dtype=torch.long)
    for layer in range(n_layers):
        positions = feature_pos[selected[starts[layer] : stops[layer]]]
        reach[:, layer, 0] = starts[layer]
        reach[:, layer, 1] = starts[layer] + torch.searchsorted(positions, torch.arange(n_pos), right=True)
    return [[(int(a), int(b)) for a, b in row] for row in reach.tolist()]


_BIT_WEIGHTS = 2 ** torch.arange(8, dtype=torch.uint8)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """``[rows, width]`` bool -> ``[rows, ceil(width / 8)]`` uint8, 8 flags a byte."""
    pad = (-mask.shape[1]) % 8
    mask = torch.nn.functional.pad(mask, (0, pad)) if pad else mask
    bits = mask.view(mask.shape[0], -1, 8).to(torch.uint8) * _BIT_WEIGHTS.to(mask.device)
    return bits.sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`_pack_bits`."""
    bits = (packed[..., None] & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.view(packed.shape[0], -1)[:, :width]
