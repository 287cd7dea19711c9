"""pytest-benchmark benchmarks of every registered backend's ``attribute`` on the tiny workload.

These are slow-ish (the circuit-tracer reference runs several times), so a plain ``pytest tests`` collects
them but skips them. Run them with any one of:

    pytest tests/benchmarks -m benchmark_suite         # select by marker
    pytest tests --benchmark-only                      # pytest-benchmark's own switch: only benchmarks
    ATTRBENCH_BENCHMARKS=1 pytest tests/benchmarks     # environment switch (e.g. for CI jobs)

(``-m "not benchmark_suite"`` deselects them outright.) The switch is an autouse session fixture of this
directory rather than a command-line option because a ``pytest_addoption`` in a sub-directory conftest is
not loaded when pytest starts from ``tests/``.

Each backend is timed with ``benchmark.pedantic(rounds=3, iterations=1)`` after an untimed ``prepare``;
``extra_info["speedup_vs_reference"]`` is the reference's median time (measured once per session by the
``reference_seconds`` fixture, 3 runs) divided by the backend's median, i.e. a ratio measured on the same
machine in the same session. Backends not registered (``attrbench.plugin_manager.get_backends()``) are skipped.

Comparing runs: save each run, then compare against a saved one (pytest-benchmark stores them under
``.benchmarks/``)::

    pytest tests/benchmarks -m benchmark_suite --benchmark-autosave
    # ... change code ...
    pytest tests/benchmarks -m benchmark_suite --benchmark-compare            # against the latest save
    pytest tests/benchmarks -m benchmark_suite --benchmark-compare=0001 --benchmark-compare-fail=median:25%
    pytest-benchmark compare --columns=median,rounds --group-by=name          # list saved runs side by side

Note that ``--benchmark-compare-fail`` compares absolute times, which only makes sense on the same
machine; for CI gating across machines use ``attrbench gate`` (ratios within one run) instead, or look at
``speedup_vs_reference`` in the saved JSON (``extra_info``).
"""

from __future__ import annotations

import os
import re
import statistics
import time

import pytest

#: the backend ladder this suite expects; any further registered backend is benchmarked too
EXPECTED_BACKENDS = ("reference", "autodiff-free", "causal-trick", "gqa-shared", "approximate-pruned")
MAX_FEATURE_NODES = 400
BATCH_SIZE = 64
REFERENCE_RUNS = 3


def benchmarks_enabled(config: pytest.Config) -> bool:
    """True when asked for by marker expression, ``--benchmark-only`` or ``ATTRBENCH_BENCHMARKS=1``."""
    if os.environ.get("ATTRBENCH_BENCHMARKS", "").lower() in ("1", "true", "yes"):
        return True
    markexpr = config.getoption("markexpr", "") or ""
    if re.search(r"(?<!not )\bbenchmark_suite\b", markexpr):
        return True
    return bool(config.getoption("benchmark_only", False))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "benchmark_suite: pytest-benchmark backend benchmarks (skipped by default)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" not in metafunc.fixturenames:
        return
    names = list(EXPECTED_BACKENDS)
    if benchmarks_enabled(metafunc.config):
        from attrbench.plugin_manager import get_backends

        names += [n for n in get_backends() if n not in names]
    metafunc.parametrize("backend_name", names)


@pytest.fixture(scope="session", autouse=True)
def _benchmarks_switch(request: pytest.FixtureRequest) -> None:
    if not benchmarks_enabled(request.config):
        pytest.skip("benchmarks run only with -m benchmark_suite, --benchmark-only or ATTRBENCH_BENCHMARKS=1")


@pytest.fixture(scope="session")
def settings():
    from attrbench.api import AttributeSettings

    return AttributeSettings(max_feature_nodes=MAX_FEATURE_NODES, batch_size=BATCH_SIZE)


@pytest.fixture(scope="session")
def built_workload():
    """The tiny preset, built once (bit-identical on every run)."""
    import torch

    from attrbench.workload.build import build_workload
    from attrbench.workload.spec import preset

    torch.manual_seed(0)
    return build_workload(preset("tiny"))


@pytest.fixture(scope="session")
def backends() -> dict:
    from attrbench.plugin_manager import get_backends

    return get_backends()


@pytest.fixture(scope="session")
def reference_seconds(backends, built_workload, settings) -> float | None:
    """Median seconds of the reference's ``attribute`` (after one warm-up), or None when unavailable."""
    import torch

    reference = backends.get("reference")
    if reference is None:
        return None
    prepared = reference.prepare(built_workload, "cpu", torch.float32)
    reference.attribute(prepared, settings)  # warm-up
    times = []
    for _ in range(REFERENCE_RUNS):
        t0 = time.perf_counter()
        reference.attribute(prepared, settings)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
