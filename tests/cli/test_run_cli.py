"""A real reference run on tiny through the CLI: the results schema, report and gate."""

from __future__ import annotations

from cli_helpers import invoke

from attrbench.bench.results import load_results

CELL_KEYS = {
    "backend",
    "exact",
    "nodes",
    "repeat",
    "status",
    "error",
    "wall_s",
    "phases_s",
    "peak_host_bytes",
    "peak_gpu_bytes",
    "peak_gpu_torch_bytes",
    "n_selected",
    "n_active",
    "n_logits",
    "info",
    "parity",
}
ENV_KEYS = {
    "python",
    "torch",
    "circuit_tracer",
    "transformers",
    "platform",
    "cpu",
    "cpu_count",
    "gpu",
    "cuda",
    "git_revision",
}
SETTINGS_KEYS = {
    "device",
    "dtype",
    "batch_size",
    "update_interval",
    "max_n_logits",
    "desired_logit_prob",
    "repeats",
    "timeout_s",
    "backend_options",
}


def test_reference_run_schema(reference_run):
    proc, data, path = reference_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert data["schema_version"] == 1
    assert set(data) >= {
        "attrbench_version",
        "created",
        "environment",
        "workload",
        "settings",
        "yardstick_note",
        "cells",
    }
    assert set(data["environment"]) >= ENV_KEYS
    assert set(data["settings"]) >= SETTINGS_KEYS
    assert data["settings"]["batch_size"] == 512 and data["settings"]["device"] == "cpu"
    w = data["workload"]
    assert w["name"] == "tiny" and len(w["hash"]) == 16 and w["config"]["model"]["num_hidden_layers"] == 4
    assert isinstance(w["n_active"], int) and w["n_active"] >= 800
    assert [(c["backend"], c["nodes"]) for c in data["cells"]] == [("reference", 200), ("reference", 800)]
    for cell in data["cells"]:
        assert set(cell) >= CELL_KEYS
        assert cell["status"] == "ok" and cell["error"] is None
        assert cell["n_selected"] == cell["nodes"] and cell["n_active"] == w["n_active"]
        assert cell["wall_s"] > 0 and cell["peak_host_bytes"] > 10 * 2**20
        assert cell["parity"] is None  # the reference is the yardstick
        assert {"forward", "feature_rows"} <= set(cell["phases_s"])
        assert sum(cell["phases_s"].values()) <= cell["wall_s"] * 1.05 + 0.05
    # progress lines, one per cell start and finish, and the preset choice
    assert proc.stderr.count("reference nodes=") == 4
    assert "using preset 'tiny'" in proc.stderr
    assert "200" in proc.stdout and "reference" in proc.stdout
    assert load_results(path) == data
    # no graph folders left behind
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_report_and_gate(reference_run, tmp_path, capsys):
    _, data, path = reference_run
    code, out, err = invoke(capsys, ["report", str(path), "--format", "json"])
    assert code == 0
    code, out, err = invoke(capsys, ["report", str(path), "--format", "markdown", "-o", str(tmp_path / "r.md")])
    assert code == 0 and (tmp_path / "r.md").read_text().strip()
    code, out, err = invoke(capsys, ["gate", "--baseline", str(path), str(path)])
    assert code in (0, 1) and out.strip()
