"""The exact backends give the same graph whichever kernels run their float32 GEMMs."""

from __future__ import annotations

import pytest
import torch

from attrbench.api import AttributeSettings
from attrbench.errors import UsageError
from attrbench.fp32_gemm import onednn_probe, onednn_route_active
from attrbench.plugin_manager import get_backends
from attrbench.workload.build import build_workload
from attrbench.workload.spec import preset


@pytest.fixture(scope="module")
def tiny():
    return build_workload(preset("tiny"))


@pytest.mark.parametrize("backend_name", ["autodiff-free", "gqa-shared"])
def test_blas_and_onednn_routes_give_the_same_graph(tiny, backend_name):
    backend = get_backends()[backend_name]
    prepared = backend.prepare(tiny, "cpu", torch.float32)

    def run(route: str):
        options = dict(backend.option_defaults, fp32_gemm=route)
        return backend.attribute(prepared, AttributeSettings(max_feature_nodes=300, batch_size=64, options=options))

    blas = run("blas")
    assert blas.info["fp32_gemm"] == "blas"
    assert not onednn_route_active()  # the setting does not outlive the attribution
    probe = onednn_probe()
    if not (probe.available and probe.exact):
        with pytest.raises(UsageError, match="not float32-exact"):
            run("onednn")
        return
    onednn = run("onednn")
    assert onednn.info["fp32_gemm"] == "onednn"
    assert not onednn_route_active()
    assert torch.equal(onednn.selected_features, blas.selected_features)
    torch.testing.assert_close(onednn.adjacency_matrix, blas.adjacency_matrix, rtol=1e-5, atol=1e-5)
    assert blas.adjacency_matrix.abs().sum() > 0
