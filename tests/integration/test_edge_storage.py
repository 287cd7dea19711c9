"""The lean layered edge store gives the same graph as the dense store, with the adjacency on disk."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attrbench.api import AttributeSettings
from attrbench.backends.exact.edge_store import DenseEdgeStore, LayeredEdgeStore, prune_rows_
from attrbench.backends.exact.ranking import circuit_tracer_influences
from attrbench.plugin_manager import get_backends
from attrbench.workload.build import build_workload
from attrbench.workload.spec import preset


@pytest.fixture(scope="module")
def tiny():
    return build_workload(preset("tiny"))


@pytest.mark.parametrize(
    "backend_name", ["autodiff-free", "gqa-shared", "approximate-pruned", "approximate-pruned@approx_dtype=bfloat16"]
)
def test_lean_store_gives_the_dense_graph(tiny, tmp_path, backend_name):
    """Every row layout of the lean store (ranked rows as magnitudes and signs, the last window's rows over
    the selected columns, signed, in bfloat16 where the VJPs are; approximate-pruned: pruned alike) packages
    to the dense store's graph."""
    backend_name, _, option = backend_name.partition("@")
    backend = get_backends()[backend_name]
    prepared = backend.prepare(tiny, "cpu", torch.float32)
    options = dict(backend.option_defaults, **dict([option.split("=")] if option else []))
    settings = AttributeSettings(max_feature_nodes=500, batch_size=64, options=options)
    dense = backend.attribute(prepared, settings)
    settings.options = {**settings.options, "edge_storage": "lean"}
    settings.scratch_dir = str(tmp_path)
    lean = backend.attribute(prepared, settings)
    assert lean.info["edge_storage"] == "LayeredEdgeStore" and dense.info["edge_storage"] == "DenseEdgeStore"
    assert torch.equal(lean.selected_features, dense.selected_features)
    # the dense store computes the last window over the selected columns only (gqa-shared), where BLAS may
    # block the GEMMs differently: equal up to float32 rounding, not bit for bit
    torch.testing.assert_close(lean.adjacency_matrix, dense.adjacency_matrix, rtol=1e-5, atol=1e-5)
    assert lean.adjacency_matrix.abs().sum() > 0
    assert torch.equal(lean.adjacency_matrix != 0, dense.adjacency_matrix != 0)  # pruned alike
    on_disk = np.load(lean.adjacency_file, mmap_mode="r")
    assert on_disk.shape == tuple(dense.adjacency_matrix.shape)


@pytest.mark.parametrize("backend_name", ["gqa-shared", "approximate-pruned"])
def test_gpu_layout_of_the_last_window_gives_the_same_graph(tiny, monkeypatch, backend_name):
    """The narrow matrix a GPU keeps the last window in (packaged at the end) gives the graph that the
    CPU's straight-to-adjacency path gives; run here on the CPU."""
    backend = get_backends()[backend_name]
    prepared = backend.prepare(tiny, "cpu", torch.float32)
    settings = AttributeSettings(max_feature_nodes=500, batch_size=64, options=dict(backend.option_defaults))
    direct = backend.attribute(prepared, settings)
    monkeypatch.setattr(DenseEdgeStore, "last_window_to_adjacency", lambda self: False)
    narrow = backend.attribute(prepared, settings)
    assert torch.equal(narrow.selected_features, direct.selected_features)
    assert torch.equal(narrow.adjacency_matrix, direct.adjacency_matrix)
    assert direct.adjacency_matrix.abs().sum() > 0


def test_layered_ranking_matches_circuit_tracer():
    """One topological pass over the lean rows equals circuit-tracer's power iteration."""
    torch.manual_seed(0)
    L, n_pos, per = 3, 4, 5  # features: `per` at every (layer, position >= 1)

    class Model:
        n_layers = L
        active_features = torch.tensor([(l, p, f) for l in range(L) for p in range(1, n_pos) for f in range(per)])
        n_active = len(active_features)
        layer_offsets = [l * (n_pos - 1) * per for l in range(L + 1)]
        error_offset = n_active
        token_offset = n_active + L * n_pos
        row_size = n_active + (L + 1) * n_pos
        cross_decoders: dict = {}
        weights = SimpleNamespace(dtype=torch.float32)

    Model.n_pos = n_pos
    n_logits = 2
    n_nodes = Model.n_active + (L + 1) * n_pos + n_logits
    rows = torch.cat([torch.arange(n_nodes - n_logits, n_nodes), torch.randperm(Model.n_active)[:20]])
    dense = DenseEdgeStore(Model, len(rows), n_nodes, torch.device("cpu"))
    lean = LayeredEdgeStore(Model, len(rows), n_nodes, torch.device("cpu"), None)
    for node in rows:
        layer = L if node >= Model.n_active else int(Model.active_features[node, 0])
        row = torch.zeros(1, n_nodes - n_logits)
        row[0, lean.columns[layer]] = torch.randn(len(lean.columns[layer]))
        dense.append(row, node[None])
        lean.append(row, node[None])
    probs = torch.tensor([0.7, 0.2])
    expected = circuit_tracer_influences(dense.edges, probs, dense.row_nodes)
    assert torch.allclose(lean.influences(probs), expected, rtol=1e-5, atol=1e-7)
    assert expected[: Model.n_active].abs().sum() > 0


def test_memory_limit_allows_mapping_a_graph_file_larger_than_it(tmp_path):
    """The runner's per-cell limit counts heap and anonymous memory, not file mappings: a lean-store
    adjacency larger than the limit can still be memory-mapped back (RLIMIT_AS refused that at 70k nodes)."""
    import subprocess
    import sys

    path = tmp_path / "adjacency.npy"
    with open(path, "wb") as f:  # a 2 GiB .npy made of holes
        np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 14, 1 << 15)})
        f.truncate(f.tell() + 4 * (1 << 29))
    code = (
        "import numpy as np, torch\n"
        "from attrbench.plugins.launchers import apply_memory_limit\n"
        "apply_memory_limit(1 << 30)\n"
        f"a = np.load({str(path)!r}, mmap_mode='r'); assert a.shape == (1 << 14, 1 << 15)\n"
        "try:\n    torch.empty(1 << 29).fill_(1.0)\nexcept RuntimeError:\n    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused" in out.stdout  # 2 GiB of anonymous memory is over the 1 GiB limit


def test_prune_rows_drops_entries_below_the_relative_threshold():
    """Each row keeps the entries whose magnitude reaches threshold x its largest magnitude (a negative
    largest entry counts by its magnitude); nothing else changes."""
    rows = torch.tensor([[1.0, -0.05, 0.2, -0.09], [0.3, -4.0, 0.39, -0.41], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 0.2, 0.0], [0.0, -4.0, 0.0, -0.41], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(prune_rows_(rows.clone(), threshold=0.1), expected)
    assert torch.equal(prune_rows_(rows.clone(), threshold=0.0), rows)


def test_lean_graph_file_is_removed_when_the_attribution_fails(tiny, tmp_path, monkeypatch):
    """The lean store opens its graph file when the last window starts; an attribution that fails after
    that leaves no file behind."""
    import gc

    backend = get_backends()["gqa-shared"]
    prepared = backend.prepare(tiny, "cpu", torch.float32)
    options = dict(backend.option_defaults, edge_storage="lean")
    settings = AttributeSettings(max_feature_nodes=500, batch_size=64, options=options)
    settings.scratch_dir = str(tmp_path)
    calls = []
    original = LayeredEdgeStore.append

    def append_then_fail(self, block, nodes):
        original(self, block, nodes)
        if self.narrow is not None:  # a last-window batch is in the file: fail now
            calls.append(len(nodes))
            raise RuntimeError("injected failure")

    monkeypatch.setattr(LayeredEdgeStore, "append", append_then_fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        backend.attribute(prepared, settings)
    gc.collect()
    assert calls and not list(tmp_path.glob("adjacency-*.npy"))
