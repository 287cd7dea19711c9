"""Benchmarks of each backend's ``attribute`` on the tiny workload; see conftest.py for how to run them."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.benchmark_suite


def test_attribute(benchmark, backend_name, backends, built_workload, settings, reference_seconds):
    import torch

    backend = backends.get(backend_name)
    if backend is None:
        pytest.skip(f"backend {backend_name!r} is not registered yet")
    if "cpu" not in backend.devices or "float32" not in backend.dtypes:
        pytest.skip(f"backend {backend_name!r} does not support cpu/float32")
    prepared = backend.prepare(built_workload, "cpu", torch.float32)
    backend.attribute(prepared, settings)  # warm-up, untimed

    result = benchmark.pedantic(backend.attribute, args=(prepared, settings), rounds=3, iterations=1)

    assert result.selected_features.numel() <= settings.max_feature_nodes
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    median = stats.stats.median if stats is not None else None
    benchmark.extra_info["backend"] = backend_name
    benchmark.extra_info["exact"] = bool(backend.exact)
    benchmark.extra_info["max_feature_nodes"] = settings.max_feature_nodes
    benchmark.extra_info["reference_median_s"] = reference_seconds
    benchmark.extra_info["speedup_vs_reference"] = reference_seconds / median if reference_seconds and median else None
