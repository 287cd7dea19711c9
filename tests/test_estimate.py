"""attrbench estimate, the runner's --strict pre-check and the per-cell --memory-limit."""

from __future__ import annotations

import json

import pytest
from cli_helpers import invoke, run_cli, subprocess_env

from attrbench.bench import estimate as est
from attrbench.bench.estimate import COST_MODELS, GIB, estimate_cell, fits
from attrbench.bench.runner import RunConfig, Runner
from attrbench.bench.settings import BenchSettings, resolve_memory_limit
from attrbench.plugins.launchers import ProcessLauncher
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


def test_cli_prints_a_table(capsys):
    code, out, err = invoke(capsys, ["estimate", "--model", "tiny", "--nodes", "200,800",
                                     "--backends", "reference,gqa-shared"])
    assert code == 0, err
    lines = out.splitlines()
    assert any(l.split()[:7] == ["backend", "nodes", "host", "peak", "GPU", "peak", "time"] for l in lines)
    rows = [l.split() for l in lines if l.startswith(("reference", "gqa-shared"))]
    assert [(r[0], r[1]) for r in rows] == [("reference", "200"), ("gqa-shared", "200"), ("reference", "800"),
                                            ("gqa-shared", "800")]
    assert all(r[-1] == "yes" for r in rows)
    code, out, _ = invoke(capsys, ["estimate", "--model", "large", "--nodes", "70000", "--backends", "reference",
                                   "--format", "json", "--memory-limit", "24"])
    assert code == 0
    (cell,) = json.loads(out)["cells"]
    assert cell["fits"] is False and cell["host_bytes"] > 24 * GIB


def test_estimate_usage_errors_are_one_line(capsys):
    code, _, err = invoke(capsys, ["estimate", "--model", "nope", "--nodes", "10"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown preset" in err
    code, _, err = invoke(capsys, ["estimate", "--model", "tiny", "--nodes", "10", "--backends", "zzz"])
    assert code == 2 and "unknown backend" in err


def test_strict_records_predicted_oom_without_running(tmp_path, monkeypatch, capsys):
    spec = preset("tiny")
    ref = estimate_cell(spec, "autograd", 100, batch_size=64, rate=50e9).host_bytes
    gqa = estimate_cell(spec, "vjp-causal-gqa", 100, batch_size=64, rate=50e9).host_bytes
    assert gqa < ref
    monkeypatch.setattr(est, "available_memory", lambda device, limit=None: ((gqa + ref) // 2, None))
    launched = []

    class CountingLauncher(ProcessLauncher):
        def run(self, job, timeout_s, progress=None):
            launched.append(job.backend)
            return super().run(job, timeout_s, progress)

    out = tmp_path / "r.json"
    cfg = RunConfig(spec=spec, backends=["reference", "gqa-shared"], nodes=[100], output=out,
                    settings=BenchSettings(strict=True, batch_size=64))
    doc = Runner(cfg, CountingLauncher(), progress=__import__("sys").stderr).run()
    err = capsys.readouterr().err
    cells = {c["backend"]: c for c in doc["cells"]}
    assert launched == ["gqa-shared"]
    assert cells["reference"]["status"] == "oom" and cells["reference"]["wall_s"] is None
    assert "predicted peak" in cells["reference"]["error"] and cells["reference"]["error"].endswith("not run (--strict)")
    assert cells["gqa-shared"]["status"] == "ok"
    assert "warning: reference nodes=100: predicted peak" in err
    assert json.loads(out.read_text())["settings"]["strict"] is True


def test_memory_limit_defaults():
    import psutil

    assert resolve_memory_limit("cpu", None) >= psutil.virtual_memory().total
    assert resolve_memory_limit("cuda", None) is None
    assert resolve_memory_limit("cpu", 0) is None
    assert resolve_memory_limit("cpu", 2) == 2 * GIB


def test_allocation_beyond_memory_limit_is_oom(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(["run", "--backends", "gqa-shared,hog", "--model", "tiny", "--nodes", "50", "--batch-size", "64",
                    "--memory-limit", "6", "--output", str(out)], env=subprocess_env(ATTRBENCH_TEST_HOG_GIB="16"),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {c["backend"]: c for c in json.loads(out.read_text())["cells"]}
    assert cells["hog"]["status"] == "oom", cells["hog"]
    assert "allocate" in cells["hog"]["error"] or "MemoryError" in cells["hog"]["error"]
    assert cells["gqa-shared"]["status"] == "ok"
    assert json.loads(out.read_text())["settings"]["memory_limit_bytes"] == 6 * GIB
