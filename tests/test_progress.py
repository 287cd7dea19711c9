"""Progress lines on long work: throttled, fed by the backends, shown by ``run`` and ``attribute``."""

from __future__ import annotations

import re

import pytest
import torch
from cli_helpers import run_cli, subprocess_env

from attrbench.api import AttributeSettings
from attrbench.plugin_manager import get_backends
from attrbench.progress import ProgressLine, progress_interval
from attrbench.workload.build import build_workload
from attrbench.workload.spec import preset


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_line_prints_the_latest_status_at_most_once_per_interval():
    printed, clock = [], FakeClock()
    line = ProgressLine(printed.append, interval_s=10, clock=clock)
    line.update("feature rows 512/4,000")
    clock.now += 4
    line.update("feature rows 1,024/4,000")
    assert printed == []
    assert line.seconds_to_next() == pytest.approx(6)
    clock.now += 7
    line.update("feature rows 1,536/4,000")
    assert printed == ["11.00 s: feature rows 1,536/4,000"]
    clock.now += 130
    line.tick()  # nothing new reported: the last status again, with the time
    assert printed[-1] == "2m21.0s: feature rows 1,536/4,000"


def test_progress_line_interval_zero_prints_nothing(monkeypatch):
    printed, clock = [], FakeClock()
    line = ProgressLine(printed.append, interval_s=0, clock=clock)
    clock.now += 1000
    line.update("anything")
    line.tick()
    assert printed == [] and line.seconds_to_next() is None
    monkeypatch.setenv("ATTRBENCH_PROGRESS_INTERVAL", "2.5")
    assert progress_interval() == 2.5
    monkeypatch.setenv("ATTRBENCH_PROGRESS_INTERVAL", "not a number")
    assert progress_interval() == 30.0


@pytest.fixture(scope="module")
def tiny():
    return build_workload(preset("tiny"))


@pytest.mark.parametrize("backend_name", ["autodiff-free", "gqa-shared", "approximate-pruned"])
def test_fast_backends_report_feature_rows_up_to_the_node_count(tiny, backend_name):
    backend = get_backends()[backend_name]
    reported: list[str] = []
    settings = AttributeSettings(max_feature_nodes=300, batch_size=64, progress=reported.append)
    result = backend.attribute(backend.prepare(tiny, "cpu", torch.float32), settings)
    counts = [int(m.group(1).replace(",", "")) for m in map(re.compile(r"feature rows ([\d,]+)/300$").match, reported)
              if m]
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


def test_run_prints_progress_lines_of_a_long_cell(tmp_path):
    env = subprocess_env(ATTRBENCH_PROGRESS_INTERVAL="0.25")
    proc = run_cli(["run", "--backends", "chatty", "--model", "tiny", "--nodes", "200", "--no-warmup",
                    "--output", str(tmp_path / "r.json")], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = re.findall(r"\[1/1\] chatty nodes=200 repeat=0: [0-9.]+ s: step (\d)/5", proc.stderr)
    assert steps and steps == sorted(steps), proc.stderr

    quiet = run_cli(["run", "--backends", "chatty", "--model", "tiny", "--nodes", "200", "--no-warmup",
                     "--output", str(tmp_path / "q.json")], env=subprocess_env(ATTRBENCH_PROGRESS_INTERVAL="0"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "step" not in quiet.stderr


def test_attribute_prints_progress_lines(tmp_path):
    proc = run_cli(["attribute", "--backend", "gqa-shared", "--model", "tiny", "--nodes", "1000", "--batch-size", "16",
                    "-o", str(tmp_path / "g.pt")], env=subprocess_env(ATTRBENCH_PROGRESS_INTERVAL="0.01"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"attrbench: gqa-shared: [0-9.]+ m?s: feature rows [\d,]+/1,000\n", proc.stderr), proc.stderr
