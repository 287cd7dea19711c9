"""``attrbench estimate`` and the runner's --strict pre-check."""

from __future__ import annotations

import json

from cli_helpers import invoke

from attrbench.bench import estimate as est
from attrbench.bench.estimate import GIB, estimate_cell
from attrbench.bench.runner import RunConfig, Runner
from attrbench.bench.settings import BenchSettings
from attrbench.plugins.launchers import ProcessLauncher
from attrbench.workload.spec import preset


def test_cli_prints_a_table(capsys):
    code, out, err = invoke(
        capsys, ["estimate", "--model", "tiny", "--nodes", "200,800", "--backends", "reference,gqa-shared"]
    )
    assert code == 0, err
    lines = out.splitlines()
    assert any(l.split()[:7] == ["backend", "nodes", "host", "peak", "GPU", "peak", "time"] for l in lines)
    rows = [l.split() for l in lines if l.startswith(("reference", "gqa-shared"))]
    assert [(r[0], r[1]) for r in rows] == [
        ("reference", "200"),
        ("gqa-shared", "200"),
        ("reference", "800"),
        ("gqa-shared", "800"),
    ]
    assert all(r[-1] == "yes" for r in rows)
    code, out, _ = invoke(
        capsys,
        [
            "estimate",
            "--model",
            "large",
            "--nodes",
            "70000",
            "--backends",
            "reference",
            "--format",
            "json",
            "--memory-limit",
            "24",
        ],
    )
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
    cfg = RunConfig(
        spec=spec,
        backends=["reference", "gqa-shared"],
        nodes=[100],
        output=out,
        settings=BenchSettings(strict=True, batch_size=64),
    )
    doc = Runner(cfg, CountingLauncher(), progress=__import__("sys").stderr).run()
    err = capsys.readouterr().err
    cells = {c["backend"]: c for c in doc["cells"]}
    assert launched == ["gqa-shared"]
    assert cells["reference"]["status"] == "oom" and cells["reference"]["wall_s"] is None
    assert "predicted peak" in cells["reference"]["error"] and cells["reference"]["error"].endswith(
        "not run (--strict)"
    )
    assert cells["gqa-shared"]["status"] == "ok"
    assert "warning: reference nodes=100: predicted peak" in err
    assert json.loads(out.read_text())["settings"]["strict"] is True


def test_cli_estimates_every_prompt_length(capsys):
    code, out, err = invoke(
        capsys,
        ["estimate", "--model", "long", "--n-tokens", "2048,64", "--nodes", "10000", "--backends", "gqa-shared"],
    )
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("gqa-shared")]
    assert [(r[1], r[2]) for r in rows] == [("64", "10000"), ("2048", "10000")]
    assert "tokens" in out.splitlines()[1]
    code, out, err = invoke(
        capsys, ["estimate", "--model", "long", "--n-tokens", "1", "--nodes", "100", "--backends", "gqa-shared"]
    )
    assert code == 2 and "--n-tokens" in err
