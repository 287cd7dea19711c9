"""A speedup whose two cells ran on different device models (a cluster run) is flagged in every report."""

from __future__ import annotations

import copy

from attrbench.bench.results import new_cell, new_results
from attrbench.bench.summary import render, summarise


def _run(ref_device: str, other_device: str) -> dict:
    doc = new_results(
        {"name": "tiny", "hash": "h", "config": {}, "n_active": 1000},
        {"device": "cpu", "dtype": "float32"},
        environment={},
    )
    for backend, wall, device in (("reference", 2.0, ref_device), ("gqa-shared", 0.5, other_device)):
        doc["cells"].append(
            new_cell(
                backend,
                True,
                200,
                0,
                status="ok",
                wall_s=wall,
                n_selected=200,
                info={"placement": {"node": f"node-{device}", "device": device}},
            )
        )
    return doc


def test_same_device_model_is_not_flagged():
    rows = summarise([_run("Xeon", "Xeon")])
    gqa = next(r for r in rows if r["backend"] == "gqa-shared")
    assert gqa["speedup"] == 4.0 and gqa["device_note"] is None
    assert "(!)" not in render([_run("Xeon", "Xeon")], "table")


def test_different_device_models_are_flagged_in_table_and_markdown():
    doc = _run("Xeon", "EPYC")
    gqa = next(r for r in summarise([copy.deepcopy(doc)]) if r["backend"] == "gqa-shared")
    assert gqa["speedup"] == 4.0 and gqa["device_note"] == "different devices: EPYC vs the reference's Xeon"
    for fmt in ("table", "markdown"):
        text = render([copy.deepcopy(doc)], fmt)
        assert "4.00x (!)" in text
        assert "(!) gqa-shared nodes=200: different devices: EPYC vs the reference's Xeon" in text
