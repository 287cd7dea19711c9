"""The regression gate compares within-run ratios, judges parity and refuses incomparable files."""

from __future__ import annotations

import copy
import json

import pytest

from attrbench.bench.gate import fingerprint, load_and_gate, run_gate
from attrbench.errors import NotComparableError, UsageError

BACKENDS = [
    ("reference", True, 3.4),
    ("autodiff-free", True, 1.7),
    ("causal-trick", True, 2.0),
    ("gqa-shared", True, 1.0),
    ("approximate-pruned", False, 0.5),
]


def make_results(nodes=(100, 400), dtype="float32", device="cpu", workload_hash="h123") -> dict:
    cells = []
    for n in nodes:
        for backend, exact, wall in BACKENDS:
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
                    "repeat": 0,
                    "status": "ok",
                    "error": None,
                    "wall_s": wall * n / 100,
                    "phases_s": {},
                    "peak_host_bytes": int(wall * 2**28),
                    "peak_gpu_bytes": None,
                    "peak_gpu_torch_bytes": None,
                    "n_selected": n,
                    "n_active": 1200,
                    "n_logits": 10,
                    "info": {},
                    "parity": parity,
                }
            )
    return {
        "schema_version": 1,
        "attrbench_version": "0.1.0",
        "created": "2025-01-01T00:00:00",
        "environment": {"git_revision": "abc"},
        "workload": {"name": "tiny", "hash": workload_hash, "config": {}, "n_active": 1200},
        "settings": {"device": device, "dtype": dtype, "batch_size": 64, "repeats": 1},
        "yardstick_note": None,
        "cells": cells,
    }


def cells_of(res, backend, nodes=None):
    return [c for c in res["cells"] if c["backend"] == backend and (nodes is None or c["nodes"] == nodes)]


@pytest.fixture
def baseline():
    return make_results()


@pytest.fixture
def current(baseline):
    return copy.deepcopy(baseline)


def test_identical_passes(baseline, current):
    code, text = run_gate(baseline, current)
    assert code == 0
    assert "gate passed" in text and "REGRESSED" not in text and "BROKEN" not in text
    assert "gqa-shared" in text and "speedup" in text and "memory ratio" in text


def test_absolute_slowdown_of_everything_is_not_a_regression(baseline, current):
    # a slower machine: every wall time doubles, ratios unchanged
    for c in current["cells"]:
        c["wall_s"] *= 2
    assert run_gate(baseline, current)[0] == 0


def test_tripled_wall_time_fails(baseline, current):
    for c in cells_of(current, "gqa-shared", 400):
        c["wall_s"] *= 3
    code, text = run_gate(baseline, current)
    assert code == 1
    line = next(l for l in text.splitlines() if "gqa-shared" in l and "speedup" in l and "400" in l)
    assert "REGRESSED" in line and "-66.7%" in line
    assert "gate FAILED: 1 regressed" in text


def test_small_slowdown_within_tolerance_passes(baseline, current):
    for c in cells_of(current, "gqa-shared"):
        c["wall_s"] *= 1.2  # speedup drops ~17% < 25%
    assert run_gate(baseline, current)[0] == 0
    assert run_gate(baseline, current, max_speedup_drop=0.1)[0] == 1


def test_memory_growth_fails(baseline, current):
    for c in cells_of(current, "causal-trick", 100):
        c["peak_host_bytes"] *= 2
    code, text = run_gate(baseline, current)
    assert code == 1
    assert any("memory ratio" in l and "REGRESSED" in l and "causal-trick" in l for l in text.splitlines())


@pytest.mark.parametrize("field,value", [("selected_jaccard", 0.9), ("rel_frobenius", 1e-2)])
def test_broken_exact_parity_fails(baseline, current, field, value):
    for c in cells_of(current, "gqa-shared", 100):
        c["parity"][field] = value
    code, text = run_gate(baseline, current)
    assert code == 1
    assert any(field in l and "BROKEN" in l for l in text.splitlines())


def test_broken_parity_fails_even_when_baseline_was_broken(baseline, current):
    for res in (baseline, current):
        for c in cells_of(res, "autodiff-free"):
            c["parity"]["selected_jaccard"] = 0.9
    assert run_gate(baseline, current)[0] == 1


def test_bf16_tolerance_is_looser():
    base, cur = make_results(dtype="bfloat16"), make_results(dtype="bfloat16")
    for c in cells_of(cur, "gqa-shared"):
        c["parity"]["rel_frobenius"] = 1e-2
    assert run_gate(base, cur)[0] == 0


@pytest.mark.parametrize("field,value", [("edge_recall", 0.98), ("pruned_node_jaccard", 0.9)])
def test_broken_approximate_parity_fails(baseline, current, field, value):
    for c in cells_of(current, "approximate-pruned", 400):
        c["parity"][field] = value
    assert run_gate(baseline, current)[0] == 1


def test_approximate_backend_is_not_held_to_exact_thresholds(baseline, current):
    # selected_jaccard 0.98 and rel err 4e-3 are fine for the approximate backend
    code, _ = run_gate(baseline, current)
    assert code == 0


def test_ok_cell_becoming_oom_fails(baseline, current):
    for c in cells_of(current, "causal-trick", 400):
        c.update(status="oom", error="CUDA out of memory", wall_s=None, parity=None)
    code, text = run_gate(baseline, current)
    assert code == 1
    assert any("causal-trick" in l and "status" in l and "oom" in l and "REGRESSED" in l for l in text.splitlines())


def test_reference_oom_fails_and_speedups_are_skipped(baseline, current):
    for c in cells_of(current, "reference", 400):
        c.update(status="oom", error="out of memory", wall_s=None)
    code, text = run_gate(baseline, current)
    assert code == 1
    assert not any("speedup" in l and " 400 " in l for l in text.splitlines())


def test_failed_in_both_is_not_a_regression(baseline, current):
    for res in (baseline, current):
        for c in cells_of(res, "reference", 400):
            c.update(status="timeout", error="timed out", wall_s=None)
    assert run_gate(baseline, current)[0] == 0


def test_different_workload_hash_is_not_comparable(baseline):
    other = make_results(workload_hash="other")
    with pytest.raises(NotComparableError, match="^not comparable: workload hash differs"):
        run_gate(baseline, other)


@pytest.mark.parametrize(
    "kwargs,reason",
    [({"dtype": "bfloat16"}, "dtype"), ({"device": "cuda"}, "device kind"), ({"nodes": (100,)}, "nodes")],
)
def test_other_fingerprint_mismatches(baseline, kwargs, reason):
    with pytest.raises(NotComparableError, match=reason):
        run_gate(baseline, make_results(**kwargs))


def test_backend_set_mismatch(baseline, current):
    current["cells"] = [c for c in current["cells"] if c["backend"] != "causal-trick"]
    with pytest.raises(NotComparableError, match="backends"):
        run_gate(baseline, current)


def test_cuda_device_index_is_ignored():
    assert fingerprint(make_results(device="cuda:0")) == fingerprint(make_results(device="cuda"))


def test_markdown_output(baseline, current):
    code, text = run_gate(baseline, current, format="markdown")
    assert code == 0
    assert "| backend" in text and "**gate passed" in text


def test_load_and_gate(tmp_path, baseline, current):
    b, c = tmp_path / "base.json", tmp_path / "cur.json"
    b.write_text(json.dumps(baseline))
    for cell in cells_of(current, "gqa-shared"):
        cell["wall_s"] *= 3
    c.write_text(json.dumps(current))
    assert load_and_gate(b, b)[0] == 0
    assert load_and_gate(b, c)[0] == 1


def test_corrupt_baseline_is_usage_error(tmp_path, baseline):
    b, c = tmp_path / "base.json", tmp_path / "cur.json"
    b.write_text('{"schema_version": 1, "cells": [')
    c.write_text(json.dumps(baseline))
    with pytest.raises(UsageError) as info:
        load_and_gate(b, c)
    assert str(b) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", ['{"schema_version": 2, "cells": []}', '{"schema_version": 1}', "[]"])
def test_wrong_schema_is_usage_error(tmp_path, baseline, content):
    b, c = tmp_path / "base.json", tmp_path / "cur.json"
    b.write_text(content)
    c.write_text(json.dumps(baseline))
    with pytest.raises(UsageError):
        load_and_gate(b, c)


def test_missing_file_is_usage_error(tmp_path, baseline):
    c = tmp_path / "cur.json"
    c.write_text(json.dumps(baseline))
    with pytest.raises(UsageError, match="missing.json"):
        load_and_gate(tmp_path / "missing.json", c)


def test_some_repeats_failing_where_none_did_fails(baseline):
    current = copy.deepcopy(baseline)
    for res in (baseline, current):
        extra = [dict(c, repeat=1) for c in res["cells"]]
        res["cells"] += copy.deepcopy(extra)
    for c in cells_of(current, "gqa-shared", 100):
        if c["repeat"] == 1:
            c.update(status="timeout", error="timed out", wall_s=None)
    code, text = run_gate(baseline, current)
    assert code == 1
    assert any("gqa-shared" in l and "ok (1/2)" in l and "REGRESSED" in l for l in text.splitlines())
