"""The estimate's cost models and the per-cell memory-limit default."""

from __future__ import annotations

import pytest

from attrbench.bench.estimate import COST_MODELS, GIB, estimate_cell, fits
from attrbench.bench.settings import resolve_memory_limit
from attrbench.workload.spec import preset


@pytest.mark.parametrize("backend", COST_MODELS)
def test_estimate_grows_with_nodes(backend):
    spec = preset("small")
    small, big = (estimate_cell(spec, backend, n, rate=50e9) for n in (1000, 20000))
    assert big.host_bytes > small.host_bytes > 0
    assert big.time_s > small.time_s > 0
    assert small.gpu_bytes is None
    gpu = estimate_cell(spec, backend, 20000, device="cuda", rate=30e12)
    assert gpu.gpu_bytes is not None and gpu.gpu_bytes > 0


def test_reference_at_70000_nodes_does_not_fit_in_24_gib():
    e = estimate_cell(preset("large"), "autograd", 70000, rate=50e9)
    ok, reason = fits(e, 24 * GIB, None)
    assert not ok and "exceeds 24.0 GiB available" in reason
    assert e.host_bytes > 40 * GIB  # ~26 GB of edge rows + ~20 GB adjacency, as circuit-tracer allocates them
    assert fits(estimate_cell(preset("tiny"), "autograd", 200, rate=50e9), 24 * GIB, None)[0]


def test_memory_limit_defaults():
    import psutil

    assert resolve_memory_limit("cpu", None) >= psutil.virtual_memory().total
    assert resolve_memory_limit("cuda", None) is None
    assert resolve_memory_limit("cpu", 0) is None
    assert resolve_memory_limit("cpu", 2) == 2 * GIB
