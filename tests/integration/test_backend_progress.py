"""Backends feed progress lines: the fast backends count feature rows, the reference passes circuit-tracer's log on."""

from __future__ import annotations

import re

import pytest
import torch

from attrbench.api import AttributeSettings
from attrbench.plugin_manager import get_backends
from attrbench.workload.build import build_workload
from attrbench.workload.spec import preset


@pytest.fixture(scope="module")
def tiny():
    return build_workload(preset("tiny"))


@pytest.mark.parametrize("backend_name", ["autodiff-free", "gqa-shared", "approximate-pruned"])
def test_fast_backends_report_feature_rows_up_to_the_node_count(tiny, backend_name):
    backend = get_backends()[backend_name]
    reported: list[str] = []
    settings = AttributeSettings(max_feature_nodes=300, batch_size=64, progress=reported.append)
    result = backend.attribute(backend.prepare(tiny, "cpu", torch.float32), settings)
    counts = [
        int(m.group(1).replace(",", "")) for m in map(re.compile(r"feature rows ([\d,]+)/300$").match, reported) if m
    ]
    assert counts == sorted(counts) and counts[-1] == 300 == int(result.selected_features.numel())
    assert any(text.startswith("ranking") for text in reported)
    assert reported[-1].startswith("packaging the")


def test_reference_passes_circuit_tracers_own_log_lines_on(tiny):
    backend = get_backends()["reference"]
    reported: list[str] = []
    settings = AttributeSettings(max_feature_nodes=100, batch_size=64, progress=reported.append)
    backend.attribute(backend.prepare(tiny, "cpu", torch.float32), settings)
    # circuit-tracer's verbose log ends its phases with "... in 0.12s"
    assert any(re.search(r" in [0-9.]+s$", text) for text in reported), reported[:20]
