"""``attrbench run --n-tokens A,B``: one run over two prompt lengths, through the CLI, then its report."""

from __future__ import annotations

import json

from cli_helpers import invoke, run_cli, subprocess_env

from attrbench.bench.results import load_results


def test_a_run_over_two_prompt_lengths(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    proc = run_cli(
        [
            "run",
            "--model",
            "tiny",
            "--n-tokens",
            "24,12",
            "--nodes",
            "100",
            "--backends",
            "autodiff-free,gqa-shared",
            "--no-warmup",
            "-o",
            str(out),
        ],
        env=subprocess_env(None),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = load_results(out)
    assert [(c["backend"], c["n_tokens"]) for c in data["cells"]] == [
        ("autodiff-free", 12),
        ("gqa-shared", 12),
        ("autodiff-free", 24),
        ("gqa-shared", 24),
    ]
    assert all(c["status"] == "ok" for c in data["cells"])
    gqa = [c for c in data["cells"] if c["backend"] == "gqa-shared"]
    assert [c["parity"]["against"] for c in gqa] == ["autodiff-free", "autodiff-free"]  # same length's yardstick
    assert all(c["parity"]["selected_jaccard"] == 1.0 for c in gqa)
    assert gqa[0]["n_active"] < gqa[1]["n_active"]  # the longer prompt has more active features
    workload = data["workload"]
    assert workload["n_tokens"] == [12, 24] and workload["config"]["prompt"]["n_tokens"] == 24
    assert set(workload["hashes"]) == {"12", "24"} and workload["hashes"]["24"] == workload["hash"]
    assert {g["backend"] for g in data["growth"]} == {"autodiff-free", "gqa-shared"}
    assert all(g["fitted_n_tokens"] == [12, 24] and g["time_exponent"] is not None for g in data["growth"])
    assert "gqa-shared n_tokens=12 nodes=100 repeat=0: started" in proc.stderr
    code, text, err = invoke(capsys, ["report", str(out), "--format", "markdown"])
    assert code == 0, err
    assert "## Cost against prompt length" in text and "24 tokens, 100 feature nodes" in text
    code, text, err = invoke(capsys, ["report", str(out), "--format", "json"])
    assert code == 0 and json.loads(text)["growth"] == data["growth"]
