"""The CLI in-process: list-backends, help everywhere, bad input is one line, declared devices and dtypes."""

from __future__ import annotations

import json

from cli_helpers import invoke


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


def test_list_backends(capsys):
    code, out, err = invoke(capsys, ["list-backends"])
    assert code == 0
    assert "reference" in out and "exact" in out and "cpu" in out


def test_help_everywhere(capsys):
    for cmd in ([], ["run"], ["report"], ["gate"], ["list-backends"]):
        code, out, _ = invoke(capsys, [*cmd, "--help"])
        assert code == 0 and "Usage" in out


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
