"""The CLI: a real reference run on tiny, the results schema, list-backends/report/gate, and bad input."""

from __future__ import annotations

import json

from cli_helpers import invoke

from attrbench.bench.results import load_results

CELL_KEYS = {"backend", "exact", "nodes", "repeat", "status", "error", "wall_s", "phases_s", "peak_host_bytes",
             "peak_gpu_bytes", "peak_gpu_torch_bytes", "n_selected", "n_active", "n_logits", "info", "parity"}
ENV_KEYS = {"python", "torch", "circuit_tracer", "transformers", "platform", "cpu", "cpu_count", "gpu", "cuda",
            "git_revision"}
SETTINGS_KEYS = {"device", "dtype", "batch_size", "update_interval", "max_n_logits", "desired_logit_prob", "repeats",
                 "timeout_s", "backend_options"}


def test_reference_run_schema(reference_run):
    proc, data, path = reference_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert data["schema_version"] == 1
    assert set(data) >= {"attrbench_version", "created", "environment", "workload", "settings", "yardstick_note", "cells"}
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


def test_list_backends(capsys):
    code, out, err = invoke(capsys, ["list-backends"])
    assert code == 0
    assert "reference" in out and "exact" in out and "cpu" in out


def test_help_everywhere(capsys):
    for cmd in ([], ["run"], ["report"], ["gate"], ["list-backends"]):
        code, out, _ = invoke(capsys, [*cmd, "--help"])
        assert code == 0 and "Usage" in out


def _bad_inputs(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    not_results = tmp_path / "notres.json"
    not_results.write_text(json.dumps({"schema_version": 99}))
    cases = [
        (["run", "--backends", "nope", "--model", "tiny"], "unknown backend 'nope'"),
        (["run", "--nodes", "0", "--model", "tiny"], "positive integers"),
        (["run", "--nodes", "12,abc", "--model", "tiny"], "positive integers"),
        (["run", "--nodes", "5000", "--model", "tiny"], "preset 'small' has enough"),
        (["run", "--nodes", "100000000"], "more than any preset"),
        (["run", "--model", "gigantic"], "unknown preset"),
        (["run", "--workload", str(bad_json)], "not valid JSON"),
        (["run", "--workload", str(tmp_path / "missing.json")], "does not exist"),
        (["run", "--workload", str(bad_json), "--model", "tiny"], "mutually exclusive"),
        (["run", "--model", "tiny", "--dtype", "float16"], "not supported"),
        (["run", "--model", "tiny", "--batch-size", "0"], "--batch-size must be a positive"),
        (["run", "--model", "tiny", "--repeats", "-1"], "--repeats must be a positive"),
        (["run", "--model", "tiny", "--output", str(a_file / "r.json")], "not writable"),
        (["run", "--model", "tiny", "--option", "novalue"], "KEY=VALUE"),
        (["run", "--model", "tiny", "--frobnicate"], "No such option"),
        (["run", "--model", "tiny", "--resume", str(not_results)], "schema_version"),
        (["report", str(tmp_path / "missing.json")], "missing.json"),
        (["report", str(bad_json)], "JSON"),
        (["gate", "--baseline", str(not_results), str(not_results)], "schema_version"),
    ]
    try:
        import torch

        if not torch.cuda.is_available():
            cases.append((["run", "--model", "tiny", "--device", "cuda"], "no CUDA GPU"))
    except ImportError:
        pass
    return cases


def test_bad_usage_is_one_line(tmp_path, capsys):
    for args, fragment in _bad_inputs(tmp_path):
        code, out, err = invoke(capsys, args)
        lines = [l for l in err.splitlines() if l.strip()]
        assert code == 2, (args, err)
        assert len(lines) == 1, (args, err)
        assert "Traceback" not in err
        assert fragment in lines[0], (args, lines[0])


def test_backend_device_and_dtype_declarations(extra_plugins, capsys):
    extra_plugins()
    code, out, err = invoke(capsys, ["run", "--model", "tiny", "--backends", "f32only", "--dtype", "bfloat16"])
    assert code == 2 and "does not support dtype 'bfloat16'" in err and len(err.strip().splitlines()) == 1
    code, out, err = invoke(capsys, ["run", "--model", "tiny", "--backends", "f32only", "--device", "cuda"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, out, err = invoke(capsys, ["run", "--model", "tiny", "--backends", "f32only", "--option", "foo=1"])
    assert code == 2 and "--option foo" in err
