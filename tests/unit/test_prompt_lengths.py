"""Prompt-length sweeps: --n-tokens lists, cells keyed by length, the growth fit, reports of the curve."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_reports import make_results

from attrbench.bench.estimate import estimate_cell
from attrbench.bench.growth import fit_exponent, growth_records, lengths_of
from attrbench.bench.plan import plan_cells
from attrbench.bench.results import ResultsDocument, cell_key, new_cell, validate_results
from attrbench.bench.runner import RunConfig
from attrbench.bench.settings import BenchSettings
from attrbench.bench.summary import render, summarise
from attrbench.cli.options import check_plan_size, parse_lengths
from attrbench.errors import UsageError
from attrbench.plugin_manager import get_backends
from attrbench.workload.build import build_prompt
from attrbench.workload.seeded_transcoders import calibrated_thresholds
from attrbench.workload.spec import preset, with_overrides

LENGTHS = (64, 256, 1024, 2048)


def test_n_tokens_list_is_parsed_sorted_and_checked():
    assert parse_lengths(None) is None
    assert parse_lengths("2048,64, 256,64") == [64, 256, 2048]
    for bad in ("1", "64,x", "", "0"):
        with pytest.raises(UsageError, match="--n-tokens"):
            parse_lengths(bad)
    with pytest.raises(UsageError, match="4 prompt lengths"):
        check_plan_size(5, 1000, 1, n_lengths=4)


def test_cells_are_keyed_and_ordered_by_prompt_length():
    cells = plan_cells(["gqa-shared", "reference"], [10000], 1, get_backends(), lengths=[256, 64])
    assert [c.key for c in cells] == [
        ("reference", 64, 10000, 0),
        ("gqa-shared", 64, 10000, 0),
        ("reference", 256, 10000, 0),
        ("gqa-shared", 256, 10000, 0),
    ]
    assert cells[0].label() == "reference n_tokens=64 nodes=10000 repeat=0"
    assert cells[0].group != cells[2].group
    one = plan_cells(["reference"], [200], 1, get_backends(), lengths=[32])
    assert one[0].key == ("reference", 32, 200, 0) and one[0].label() == "reference nodes=200 repeat=0"


def test_each_length_is_its_own_workload_with_the_same_weights_and_a_shared_prompt_prefix():
    config = RunConfig(preset("long"), ["gqa-shared"], [100], BenchSettings(), lengths=list(LENGTHS))
    specs = [config.spec_for(t) for t in LENGTHS]
    assert [s.prompt.length for s in specs] == list(LENGTHS)
    assert len({s.content_hash() for s in specs}) == len(LENGTHS)  # each length is cached and compared apart
    assert all(s.model == specs[0].model and s.transcoders == specs[0].transcoders and s.seed == 0 for s in specs)
    prompts = [build_prompt(s) for s in specs]
    for short, long in zip(prompts, prompts[1:], strict=False):
        assert torch.equal(long[: len(short)], short)  # the prompt extended, not redrawn
    record = config.workload_record()
    assert record["n_tokens"] == list(LENGTHS)
    assert record["hashes"] == {str(t): s.content_hash() for t, s in zip(LENGTHS, specs, strict=True)}


def test_the_long_preset_has_active_features_in_proportion_to_the_prompt():
    spec = preset("long")
    actives = [with_overrides(spec, n_tokens=t).estimated_active_features for t in LENGTHS]
    assert actives[-1] > 100_000 and actives[-1] / actives[0] == pytest.approx(2047 / 63)


def test_fast_calibration_gives_the_brute_force_thresholds():
    def brute_force(pre, target_l0, margin=0.05):
        flat = pre.flatten().sort(descending=True).values
        k = max(1, min(flat.numel() - 1, int(round(target_l0 * pre.shape[0]))))
        cut = (flat[k - 1] + flat[k]) / 2
        values = pre.T
        step = margin * 1.001
        cands = torch.cat([cut.expand(values.shape[0], 1), values - step, values + step], dim=1)
        clear = ((values[:, None, :] - cands[:, :, None]).abs() >= margin).all(-1)
        distance = (cands - cut).abs().masked_fill(~clear, float("inf"))
        return cands.gather(1, distance.argmin(1, keepdim=True))[:, 0]

    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        pre = torch.randn(40, 120, generator=g)
        if seed % 2:
            pre = (pre * 20).round() / 20  # ties and values exactly one margin apart
        for margin in (0.05, 0.002):
            assert torch.equal(calibrated_thresholds(pre, 3.0, margin), brute_force(pre, 3.0, margin))


def test_exponent_is_the_log_log_slope():
    assert fit_exponent([(64, 3 * 64**2), (256, 3 * 256**2), (2048, 3 * 2048**2)]) == pytest.approx(2.0)
    assert fit_exponent([(10, 5.0), (100, 50.0)]) == pytest.approx(1.0)
    assert fit_exponent([(64, 1.0)]) is None
    assert fit_exponent([(64, 1.0), (64, 2.0)]) is None  # one distinct length
    assert fit_exponent([(64, 1.0), (256, None), (1024, 0.0)]) is None  # non-positive values are not fitted
    noisy = fit_exponent([(1, 1.0), (2, 2.2), (4, 3.9), (8, 8.4)])
    assert noisy is not None and 0.9 < noisy < 1.1


def sweep_results(reference_fails_at=(1024, 2048)) -> dict:
    """A two-backend run over four prompt lengths: gqa-shared wall ~ n^1.5, memory ~ n; the reference
    wall ~ n^2 where it completes and ``timeout`` / ``oom`` where it does not."""
    doc = make_results(nodes=(10000,), repeats=1, flops=False)
    doc["workload"]["config"] = {"prompt": {"n_tokens": 2048}}
    cells = []
    for t in LENGTHS:
        for backend, wall, peak in (("reference", 1e-4 * t**2, 2e6 * t), ("gqa-shared", 1e-3 * t**1.5, 1e6 * t)):
            cell = new_cell(
                backend,
                True,
                10000,
                0,
                n_tokens=t,
                status="ok",
                wall_s=wall,
                peak_host_bytes=int(peak),
                n_active=80 * t,
            )
            if backend == "reference" and t in reference_fails_at:
                cell.update(status="timeout" if t == 1024 else "oom", wall_s=None, error="killed")
            if backend != "reference":
                cell["parity"] = {"against": "reference", "selected_jaccard": 1.0, "rel_frobenius": 1e-7}
            cells.append(cell)
    doc["cells"] = cells
    return doc


def test_growth_records_fit_ok_lengths_and_mark_the_others():
    doc = sweep_results()
    assert lengths_of(doc) == list(LENGTHS)
    records = {r["backend"]: r for r in growth_records(doc)}
    gqa, ref = records["gqa-shared"], records["reference"]
    assert gqa["time_exponent"] == pytest.approx(1.5) and gqa["memory_exponent"] == pytest.approx(1.0)
    assert gqa["fitted_n_tokens"] == list(LENGTHS) and gqa["failed"] == {}
    assert ref["time_exponent"] == pytest.approx(2.0) and ref["fitted_n_tokens"] == [64, 256]
    assert ref["failed"] == {"1024": "timeout", "2048": "oom"}
    one_length = make_results(nodes=(100,), repeats=1)
    assert growth_records(one_length) == []


def test_results_keep_one_cell_per_length_and_fill_lengths_of_older_files():
    doc = ResultsDocument({"name": "long", "config": {"prompt": {"n_tokens": 2048}}}, {}, None)
    from attrbench.bench.results import CellRecord

    for t in (64, 2048):
        doc.put(CellRecord("gqa-shared", True, 10000, 0, "ok", n_tokens=t, wall_s=float(t), n_active=t))
    assert sorted(cell_key(c) for c in doc.doc["cells"]) == [
        ("gqa-shared", 64, 10000, 0),
        ("gqa-shared", 2048, 10000, 0),
    ]
    assert doc.doc["workload"]["n_active"] == 2048  # the workload record's own length
    assert [g["time_exponent"] for g in doc.doc["growth"]] == [pytest.approx(1.0)]
    older = {
        "workload": {"config": {"prompt": {"n_tokens": 32}}},
        "cells": [new_cell("reference", True, 200, 0, status="ok")],
    }
    resumed = ResultsDocument({"name": "tiny"}, {}, None, resume=older)
    assert resumed.kept == {("reference", 32, 200, 0)}


def test_schema_accepts_sweeps_and_refuses_bad_growth():
    doc = sweep_results()
    doc["workload"]["n_tokens"] = list(LENGTHS)
    doc["growth"] = growth_records(doc)
    validate_results(json.loads(json.dumps(doc)))
    doc["growth"][0]["time_exponent"] = "fast"
    with pytest.raises(UsageError, match="growth"):
        validate_results(json.loads(json.dumps(doc)))
    doc = sweep_results()
    doc["cells"][0]["n_tokens"] = 0
    with pytest.raises(UsageError, match="n_tokens"):
        validate_results(json.loads(json.dumps(doc)))


def test_summary_compares_backends_at_the_same_length():
    rows = summarise([sweep_results()])
    gqa = {r["n_tokens"]: r for r in rows if r["backend"] == "gqa-shared"}
    assert gqa[256]["speedup"] == pytest.approx((1e-4 * 256**2) / (1e-3 * 256**1.5))
    assert gqa[2048]["speedup"] is None  # the reference did not complete there


def test_reporters_show_the_curve_and_the_exponents():
    doc = sweep_results()
    for fmt in ("table", "markdown"):
        text = render([doc], fmt)
        assert "ost against prompt length" in text, fmt
        line = next(l for l in text.splitlines() if "gqa-shared" in l and "1.50" in l)
        assert "1.00" in line  # memory exponent next to the time exponent
        ref_line = next(l for l in text.splitlines() if "reference" in l and "2.00" in l)
        assert "timeout" in ref_line and "oom" in ref_line
        assert "2048 tokens, 10000 feature nodes" in text
    growth = json.loads(render([doc], "json"))["growth"]
    assert {g["backend"]: round(g["time_exponent"], 6) for g in growth} == {"reference": 2.0, "gqa-shared": 1.5}
    csv_text = render([doc], "csv")
    assert "n_tokens" in csv_text.splitlines()[0] and ",2048,10000," in csv_text
    assert render([doc], "png").startswith(b"\x89PNG")
    plain = render([make_results(nodes=(100,), repeats=1)], "markdown")
    assert "prompt length" not in plain


def test_estimate_follows_the_prompt_length():
    spec = preset("long")
    estimates = [estimate_cell(with_overrides(spec, n_tokens=t), "vjp-causal-gqa", 10000, rate=50e9) for t in LENGTHS]
    assert [e.n_tokens for e in estimates] == list(LENGTHS)
    hosts = [e.host_bytes for e in estimates]
    assert hosts == sorted(hosts) and hosts[-1] < 24 * 2**30
    assert estimates[-1].time_s > estimates[0].time_s
    assert not math.isnan(estimates[-1].time_s)


def test_gate_compares_each_length_with_the_same_length():
    from attrbench.bench.gate import check_comparable, run_gate
    from attrbench.errors import NotComparableError

    base = sweep_results()
    code, text = run_gate(base, sweep_results())
    assert code == 0, text
    assert "10000 @256" in text and "10000 @2048" in text
    slower = sweep_results()
    for cell in slower["cells"]:
        if cell["backend"] == "gqa-shared" and cell["n_tokens"] == 256:
            cell["wall_s"] *= 3
    code, text = run_gate(base, slower)
    assert code == 1 and "REGRESSED" in next(line for line in text.splitlines() if "@256" in line and "speedup" in line)
    fewer = sweep_results()
    fewer["cells"] = [c for c in fewer["cells"] if c["n_tokens"] != 2048]
    with pytest.raises(NotComparableError, match="prompt lengths"):
        check_comparable(base, fewer)


def test_threshold_margin_is_checked_and_absent_from_older_hashes():
    from attrbench.workload.spec import spec_from_dict

    assert "threshold_margin" not in preset("small").to_dict()["transcoders"]  # older workloads keep their hashes
    assert preset("long").to_dict()["transcoders"]["threshold_margin"] == 0.002
    data = {"model": {}, "transcoders": {"threshold_margin": 0.01}}
    assert spec_from_dict(data).transcoders.threshold_margin == 0.01
    for bad in (0, -0.1, "wide"):
        with pytest.raises(UsageError, match="threshold_margin"):
            spec_from_dict({"model": {}, "transcoders": {"threshold_margin": bad}})


def test_markdown_names_the_yardstick_of_each_length():
    doc = sweep_results()
    for cell in doc["cells"]:
        if cell["backend"] == "gqa-shared" and cell["n_tokens"] >= 1024:
            cell["parity"]["against"] = "autodiff-free"  # where the reference ran out of memory
    text = render([doc], "markdown")
    line = next(l for l in text.splitlines() if l.startswith("- `gqa-shared`"))
    assert "vs `reference` (64 tokens, 256 tokens) and `autodiff-free` (1024 tokens, 2048 tokens)" in line
    assert "Jaccard 1.0000" in line
