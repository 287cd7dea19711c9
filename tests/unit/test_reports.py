"""Reporters: every built-in format renders synthetic results; helpers aggregate repeats correctly."""

from __future__ import annotations

import copy
import csv
import io
import json

import pytest

from attrbench.bench import summary as reporting
from attrbench.bench.results import load_results
from attrbench.bench.summary import render, summarise
from attrbench.errors import UsageError
from attrbench.formatting import fmt_bytes, fmt_seconds

BACKENDS = [
    ("reference", True, 3.4),
    ("autodiff-free", True, 1.7),
    ("causal-trick", True, 2.0),
    ("gqa-shared", True, 1.0),
    ("approximate-pruned", False, 0.5),
]


def make_results(
    nodes=(100, 400), repeats=2, dtype="float32", device="cpu", rev="abcdef1234", workload_hash="h123", flops=True
) -> dict:
    """A results dict shaped like `attrbench run` output; reference wall 3.4 s, gqa-shared 1.0 s (3.40x)."""
    cells = []
    for n in nodes:
        scale = n / nodes[0]
        for backend, exact, wall in BACKENDS:
            for rep in range(repeats):
                parity = None
                if backend != "reference":
                    parity = {
                        "against": "reference",
                        "selected_jaccard": 1.0 if exact else 0.98,
                        "rel_frobenius": 3e-6 if exact else 4e-3,
                        "max_abs": 1e-6,
                        "edge_recall": 1.0 if exact else 0.995,
                        "pruned_node_jaccard": 1.0 if exact else 0.97,
                    }
                cells.append(
                    {
                        "backend": backend,
                        "exact": exact,
                        "nodes": n,
                        "repeat": rep,
                        "status": "ok",
                        "error": None,
                        "wall_s": wall * scale * (1.0 + 0.01 * rep),
                        "phases_s": {"setup": 0.1, "forward": 0.2 * wall, "feature_rows": 0.6 * wall},
                        "peak_host_bytes": int(wall * 300 * 2**20),
                        "peak_gpu_bytes": None,
                        "peak_gpu_torch_bytes": None,
                        "n_selected": n,
                        "n_active": 1200,
                        "n_logits": 10,
                        "info": {"flop_fraction": 0.5} if flops and backend != "reference" else {},
                        "parity": parity,
                    }
                )
    return {
        "schema_version": 1,
        "attrbench_version": "0.1.0",
        "created": "2025-01-01T00:00:00",
        "environment": {
            "python": "3.11",
            "torch": "2.13",
            "circuit_tracer": "0.5.0",
            "transformers": "4.57",
            "platform": "linux",
            "cpu": "test cpu",
            "cpu_count": 2,
            "gpu": None,
            "cuda": None,
            "git_revision": rev,
        },
        "workload": {"name": "tiny", "hash": workload_hash, "config": {}, "n_active": 1200},
        "settings": {
            "device": device,
            "dtype": dtype,
            "batch_size": 64,
            "update_interval": 4,
            "max_n_logits": 10,
            "desired_logit_prob": 0.95,
            "repeats": repeats,
            "timeout_s": 600,
            "backend_options": {},
        },
        "yardstick_note": "reference = circuit-tracer 0.5.0 attribute()",
        "cells": cells,
    }


@pytest.fixture
def results():
    return make_results()


def test_summarise_speedup_memory_and_repeats(results):
    rows = summarise([results])
    assert len(rows) == 2 * len(BACKENDS)
    row = next(r for r in rows if r["backend"] == "gqa-shared" and r["nodes"] == 100)
    # median over the two repeats: reference 3.4*1.005, gqa 1.0*1.005
    assert row["speedup"] == pytest.approx(3.4)
    assert row["mem_ratio"] == pytest.approx(1.0 / 3.4)
    assert row["parity_verdict"] == "ok"
    assert row["phases_s"]["feature_rows"] == pytest.approx(0.6)
    ref = next(r for r in rows if r["backend"] == "reference")
    assert ref["speedup"] == pytest.approx(1.0) and ref["parity_verdict"] == "yardstick"


def test_summarise_failed_reference_gives_no_speedup(results):
    for c in results["cells"]:
        if c["backend"] == "reference" and c["nodes"] == 400:
            c.update(status="oom", error="out of memory", wall_s=None)
    rows = summarise([results])
    assert all(r["speedup"] is None for r in rows if r["nodes"] == 400)
    ref = next(r for r in rows if r["backend"] == "reference" and r["nodes"] == 400)
    assert ref["status"] == "oom" and ref["error"] == "out of memory"


def test_autodiff_free_is_the_yardstick_where_the_reference_ran_out_of_memory():
    results = make_results(nodes=(400,), repeats=1)
    for c in results["cells"]:
        if c["backend"] == "reference":
            c.update(status="oom", error="out of memory", wall_s=None)
        elif c["backend"] == "autodiff-free":
            c["parity"] = None
        else:
            c["parity"]["against"] = "autodiff-free"
    verdicts = {r["backend"]: r["parity_verdict"] for r in summarise([results])}
    assert verdicts == {
        "reference": "-",
        "autodiff-free": "yardstick",
        "causal-trick": "ok",
        "gqa-shared": "ok",
        "approximate-pruned": "approx",
    }
    text = render([results], "markdown")
    assert "- `autodiff-free`: the yardstick" in text
    # autodiff-free 1.7 s, gqa-shared 1.0 s; peaks scale with the wall times
    assert "Relative to `autodiff-free` (the yardstick) at 400 nodes: `causal-trick` 0.85x faster, 1.18x memory" in text
    assert "`gqa-shared` 1.70x faster, 0.59x memory" in text


def test_cuda_memory_ratio_uses_gpu_peak():
    res = make_results(nodes=(100,), device="cuda")
    for c in res["cells"]:
        c["peak_gpu_bytes"] = 1000 if c["backend"] == "reference" else 250
    row = next(r for r in summarise([res]) if r["backend"] == "gqa-shared")
    assert row["mem_ratio"] == pytest.approx(0.25)


def test_formatting_helpers():
    assert fmt_bytes(3 * 2**30) == "3.00 GiB"
    assert fmt_bytes(512 * 2**20) == "512.00 MiB"
    assert fmt_bytes(None) == "-"
    assert fmt_seconds(2.5) == "2.50 s"
    assert fmt_seconds(0.0123) == "12.3 ms"
    assert fmt_seconds(125) == "2m05.0s"


def test_table(results):
    text = render([results], "table")
    for backend, _, _ in BACKENDS:
        assert backend in text
    assert "3.40x" in text
    assert "100 feature nodes" in text and "400 feature nodes" in text


def test_table_shows_failures_with_message(results):
    for c in results["cells"]:
        if c["backend"] == "reference" and c["nodes"] == 400:
            c.update(status="timeout", error="timed out after 600 s\nTraceback ...", wall_s=None)
    text = render([results], "table")
    assert "timeout: timed out after 600 s" in text
    assert "Traceback" not in text


def test_markdown(results):
    text = render([results], "markdown")
    assert "Best backend: **gqa-shared**, 3.40x faster than the reference at 400 nodes" in text
    assert "Yardstick: reference = circuit-tracer" in text
    assert "| `approximate-pruned`" in text
    assert "FLOP fraction" in text and "feature_rows" in text
    assert "## Environment" in text and "test cpu" in text
    assert "**failed**" not in text


def test_markdown_verdicts_flag_broken_parity(results):
    for c in results["cells"]:
        if c["backend"] == "causal-trick":
            c["parity"]["selected_jaccard"] = 0.9
    text = render([results], "markdown")
    assert "`causal-trick`: **failed** vs `reference`" in text
    assert "`gqa-shared`: **ok**" in text
    # best backend skips broken ones; gqa-shared is the fastest anyway
    assert "Best backend: **gqa-shared**" in text


def test_bf16_tolerance():
    res = make_results(dtype="bfloat16")
    for c in res["cells"]:
        if c["parity"] and c["exact"]:
            c["parity"]["rel_frobenius"] = 1e-2
    assert {r["backend"]: r["parity_verdict"] for r in summarise([res])} == {
        "reference": "yardstick",
        "autodiff-free": "ok",
        "causal-trick": "ok",
        "gqa-shared": "ok",
        "approximate-pruned": "approx",
    }


def test_csv(results):
    text = render([results], "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(results["cells"])
    assert text.splitlines()[0].startswith("run,workload,")
    gqa = [r for r in rows if r["backend"] == "gqa-shared" and r["repeat"] == "0" and r["nodes"] == "100"]
    assert float(gqa[0]["speedup_vs_reference"]) == pytest.approx(3.4 * 1.005)
    assert "phase_feature_rows_s" in rows[0]


def test_json_round_trips(results):
    assert json.loads(render([results], "json")) == results


def test_png(results):
    data = render([results], "png")
    assert isinstance(data, bytes)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_png_handles_zero_error_and_failures(results):
    for c in results["cells"]:
        if c["backend"] == "autodiff-free":
            c["parity"]["rel_frobenius"] = 0.0
        if c["backend"] == "reference" and c["nodes"] == 400:
            c.update(status="oom", wall_s=None)
    assert render([results], "png").startswith(b"\x89PNG")


def test_merging_two_runs_labels_both(results):
    other = make_results(rev="1234567fff")
    for c in other["cells"]:
        if c["backend"] == "gqa-shared":
            c["wall_s"] *= 2
    table = render([results, other], "table")
    assert "run 1: tiny cpu float32 @abcdef1" in table
    assert "run 2: tiny cpu float32 @1234567" in table
    assert "comparison" in table and "1.70x" in table and "3.40x" in table
    md = render([results, other], "markdown")
    assert "### Run 1: tiny cpu float32 @abcdef1" in md and "### Run 2: tiny cpu float32 @1234567" in md
    assert "## Comparison" in md
    merged = json.loads(render([results, other], "json"))
    assert [r["label"] for r in merged["runs"]] == ["tiny cpu float32 @abcdef1", "tiny cpu float32 @1234567"]
    rows = list(csv.DictReader(io.StringIO(render([results, other], "csv"))))
    assert len(rows) == 2 * len(results["cells"]) and len({r["run"] for r in rows}) == 2
    assert render([results, other], "png").startswith(b"\x89PNG")


def test_identical_labels_are_disambiguated_by_file_stem(results):
    twin = copy.deepcopy(results)
    text = render([results, twin], "table", sources=["/tmp/before.json", "/tmp/after.json"])
    assert "(before)" in text and "(after)" in text
    # without sources: still two distinct labels
    labels = reporting.run_labels([results, twin])
    assert len(set(labels)) == 2


def test_unknown_format():
    with pytest.raises(UsageError, match="known formats: .*markdown"):
        render([make_results()], "docx")


def test_reporters_are_registered():
    from attrbench.plugin_manager import get_reporters

    reporters = get_reporters()
    assert {"table", "markdown", "csv", "json", "png"} <= set(reporters)
    assert reporters["png"].binary and not reporters["table"].binary


def test_load_results_file_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(UsageError, match="nope.json"):
        load_results(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="bad.json"):
        load_results(bad)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema_version": 0, "cells": []}))
    with pytest.raises(UsageError, match="schema"):
        load_results(old)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(make_results()))
    assert load_results(good)["schema_version"] == 1
