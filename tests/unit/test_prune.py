"""The streaming prune against circuit-tracer's prune_graph, and its memory behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attrbench.graph.prune import _bits_to_float, cumsum_need, prune, radix_select


def _layout(n_features, n_layers, n_pos, n_logits, g):
    """Level and position of every node in circuit-tracer's order: features, errors, tokens, logits."""
    f_layer = torch.randint(0, n_layers, (n_features,), generator=g)
    f_pos = torch.randint(1, n_pos, (n_features,), generator=g)
    order = torch.argsort(f_layer * n_pos + f_pos, stable=True)
    f_layer, f_pos = f_layer[order], f_pos[order]
    e_layer = torch.arange(n_layers).repeat_interleave(n_pos)
    level = torch.cat(
        [f_layer + 1, e_layer + 1, torch.zeros(n_pos, dtype=torch.long), torch.full((n_logits,), n_layers + 1)]
    )
    pos = torch.cat(
        [f_pos, torch.arange(n_pos).repeat(n_layers), torch.arange(n_pos), torch.full((n_logits,), n_pos - 1)]
    )
    return f_layer, f_pos, level, pos


def _rows(level, pos, r0, r1, n_sources_zero, g, density=0.5):
    """Rows r0:r1 of a DAG adjacency: edges from lower levels at earlier-or-same positions, heavy-tailed weights."""
    n = level.numel()
    b = r1 - r0
    block = (
        torch.randn(b, n, generator=g)
        * torch.rand(b, n, generator=g).pow(4)
        * (torch.rand(b, n, generator=g) < density)
    )
    block *= ((level[None, :] < level[r0:r1, None]) & (pos[None, :] <= pos[r0:r1, None])).float()
    lo, hi = n_sources_zero
    block[max(lo, r0) - r0 : max(0, min(hi, r1) - r0)] = 0  # errors and tokens have no incoming edges
    return block


def random_graph(n_features=300, n_layers=4, n_pos=8, n_logits=5, seed=0, adjacency=None):
    g = torch.Generator().manual_seed(seed)
    f_layer, f_pos, level, pos = _layout(n_features, n_layers, n_pos, n_logits, g)
    n = level.numel()
    zero_rows = (n_features, n_features + n_layers * n_pos + n_pos)
    if adjacency is None:
        adjacency = _rows(level, pos, 0, n, zero_rows, g)
    else:  # fill a memory map row block by row block
        for r0 in range(0, n, 1024):
            r1 = min(n, r0 + 1024)
            adjacency[r0:r1] = _rows(level, pos, r0, r1, zero_rows, g).numpy()
    probs = torch.rand(n_logits, generator=g)
    probs = probs / probs.sum() * 0.9
    return SimpleNamespace(
        adjacency_matrix=adjacency,
        input_tokens=torch.arange(n_pos) + 4,
        logit_targets=list(range(n_logits)),
        logit_probabilities=probs,
        selected_features=torch.arange(n_features),
        active_features=torch.stack([f_layer, f_pos, torch.randint(0, 1000, (n_features,), generator=g)], 1),
        activation_values=torch.rand(n_features, generator=g),
        n_layers=n_layers,
    )


def assert_same_as_circuit_tracer(graph, got, node_threshold=0.8, edge_threshold=0.98):
    from circuit_tracer.graph import prune_graph

    ref = prune_graph(graph, node_threshold, edge_threshold)
    assert torch.equal(got.node_mask, ref.node_mask)
    assert got.edge_mask is not None and torch.equal(got.edge_mask, ref.edge_mask)
    assert torch.allclose(got.cumulative_scores, ref.cumulative_scores, atol=1e-6, rtol=0)
    assert 0 < int(ref.node_mask.sum()) < ref.node_mask.numel()  # a real prune, not a trivial one


@pytest.mark.parametrize(
    "n_features,n_pos,seed,block_rows",
    [
        (250, 8, 0, None),  # one block: bit-identical influences
        (250, 8, 1, 7),
        (900, 12, 2, 64),
        (1900, 20, 3, 333),
    ],
)
def test_random_graphs_match_prune_graph(n_features, n_pos, seed, block_rows):
    graph = random_graph(n_features, 4, n_pos, 5, seed=seed)
    assert_same_as_circuit_tracer(graph, prune(graph, block_rows=block_rows))


@pytest.mark.parametrize("node_threshold,edge_threshold", [(0.5, 0.9), (0.95, 0.5), (0.0, 0.0)])
def test_other_thresholds(node_threshold, edge_threshold):
    graph = random_graph(400, 3, 10, 4, seed=11)
    got = prune(graph, node_threshold, edge_threshold, block_rows=50)
    from circuit_tracer.graph import prune_graph

    ref = prune_graph(graph, node_threshold, edge_threshold)
    assert torch.equal(got.node_mask, ref.node_mask)
    assert torch.equal(got.edge_mask, ref.edge_mask)


def test_rejects_bad_thresholds():
    graph = random_graph(20, 2, 4, 2)
    with pytest.raises(ValueError):
        prune(graph, node_threshold=1.5)
    with pytest.raises(ValueError):
        prune(graph, edge_threshold=-0.1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.8, 0.98])
def test_radix_threshold_is_find_threshold(seed, threshold):
    from circuit_tracer.graph import find_threshold

    g = torch.Generator().manual_seed(seed)
    n = (200, 5000, 40000)[seed % 3]
    x = torch.rand(n, generator=g) ** 6 * (torch.rand(n, generator=g) < 0.7)
    if seed % 2:
        x = torch.round(x * 50) / 50  # many ties
    t, _, total = radix_select(
        lambda: iter([x[: n // 3], x[n // 3 :]]),
        lambda mass, _c: max(cumsum_need(mass, threshold), 5e-324),
        by_mass=True,
    )
    assert total == pytest.approx(float(x.double().sum()), rel=1e-12)
    assert _bits_to_float(t) == float(find_threshold(x, threshold))


@pytest.fixture(scope="module")
def tiny_graph():
    from attrbench.api import AttributeSettings
    from attrbench.plugin_manager import get_backends
    from attrbench.workload.build import build_workload
    from attrbench.workload.spec import preset

    built = build_workload(preset("tiny"))
    backend = get_backends()["gqa-shared"]
    prepared = backend.prepare(built, "cpu", torch.float32)
    result = backend.attribute(prepared, AttributeSettings(max_feature_nodes=200, batch_size=64))
    return built, result


def test_real_tiny_graph(tiny_graph):
    from attrbench.graph.interop import to_circuit_tracer_graph

    built, result = tiny_graph
    graph = to_circuit_tracer_graph(result, built)
    assert_same_as_circuit_tracer(graph, prune(graph))
    assert_same_as_circuit_tracer(graph, prune(result, block_rows=16))


def test_edge_mask_omitted_for_large_graphs(monkeypatch):
    import attrbench.graph.prune as prune_module

    graph = random_graph(100, 2, 6, 3, seed=4)
    full = prune(graph)
    monkeypatch.setattr(prune_module, "MAX_EDGE_MASK_NODES", 50)
    got = prune(graph, block_rows=9)
    assert got.edge_mask is None
    assert torch.equal(got.node_mask, full.node_mask)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns, ignoring views of the adjacency itself."""

    def __init__(self, adjacency: torch.Tensor):
        super().__init__()
        self.adj_ptr = adjacency.untyped_storage().data_ptr()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() != self.adj_ptr:
                self.largest = max(self.largest, t.numel())
        return out


def _rss_anon() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@pytest.mark.slow
def test_streaming_on_memmap_never_allocates_n_by_n(tmp_path):
    n_features, n_layers, n_pos, n_logits = 11_000, 8, 40, 10
    n = n_features + n_layers * n_pos + n_pos + n_logits  # 11,370 nodes
    path = tmp_path / "adj.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    graph = random_graph(n_features, n_layers, n_pos, n_logits, seed=7, adjacency=mm)
    mm.flush()
    del mm, graph.adjacency_matrix
    ro = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": prune never writes to it
        graph.adjacency_matrix = torch.from_numpy(ro)

    block_rows = 512
    tracker = _LargestTensor(graph.adjacency_matrix)
    with tracker:
        got = prune(graph, block_rows=block_rows, return_edge_mask=False)
    assert got.edge_mask is None and 0 < int(got.node_mask.sum()) < n
    assert tracker.largest <= block_rows * n * 2  # row blocks only, never N x N

    # peak anonymous (non file-backed) memory of the same prune in a fresh process
    if _rss_anon() is None:
        return
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _RSS_SCRIPT,
            str(path),
            str(n_features),
            str(n_pos),
            str(n_logits),
            str(block_rows),
            json.dumps(graph.logit_probabilities.tolist()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
    )  # freed blocks go back
    # to the OS, so RssAnon follows live memory rather than what glibc keeps around
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth, kept = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kept == int(got.node_mask.sum())
    # about 50 MiB live against 493 MiB for N^2 floats
    assert growth < n * n * 4 // 4, f"peak anonymous memory grew {growth / 2**20:.0f} MiB"


_RSS_SCRIPT = """
import json, sys, threading, time, warnings
from types import SimpleNamespace
import numpy as np, torch
import circuit_tracer.graph
from attrbench.graph.prune import prune

def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

path, n_features, n_pos, n_logits, block_rows = sys.argv[1], *map(int, sys.argv[2:6])
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    adj = torch.from_numpy(np.load(path, mmap_mode="r"))
probs = torch.tensor(json.loads(sys.argv[6]))
graph = SimpleNamespace(adjacency_matrix=adj, input_tokens=torch.arange(n_pos),
                        logit_probabilities=probs, selected_features=torch.arange(n_features))
base = rss_anon()
peak = [base]
stop = threading.Event()

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.01)

t = threading.Thread(target=sample)
t.start()
try:
    result = prune(graph, block_rows=block_rows, return_edge_mask=False)
finally:
    stop.set()
    t.join()
print(json.dumps([peak[0] - base, int(result.node_mask.sum())]))
"""


def test_layered_influence_is_the_power_series_in_one_pass():
    """On a multi-block graph in circuit-tracer's node order, the one-pass influence equals the power
    series; an edge into a row that has already pushed its weight makes it decline (None), and the prune then
    falls back to the power series and still matches circuit-tracer."""
    from attrbench.graph.prune import _Scorer

    graph = random_graph(900, 4, 12, 5, seed=4)
    adj = graph.adjacency_matrix
    n = adj.shape[0]
    weights = torch.zeros(n)
    weights[-5:] = graph.logit_probabilities
    scorer = _Scorer(adj, 64)
    layered = scorer.layered_influence(weights)
    assert layered is not None and layered.abs().sum() > 0

    current, series = scorer.vecmat(weights), torch.zeros(n)
    while current.any():
        series += current
        current = scorer.vecmat(current)
    torch.testing.assert_close(layered, series, rtol=1e-5, atol=1e-7)

    # a feature of the first block reads a feature of the last feature block: the order is broken
    late = int(torch.nonzero(adj[:900].abs().sum(1) > 0).flatten()[-1])
    broken = adj.clone()
    broken[0, late] = 1.0
    assert _Scorer(broken, 64).layered_influence(weights) is None
    graph.adjacency_matrix = broken
    assert_same_as_circuit_tracer(graph, prune(graph, block_rows=64))
