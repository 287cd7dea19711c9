"""The plan's cell order, the yardstick rule and the results file helpers."""

from __future__ import annotations

import json

import pytest

from attrbench.bench.plan import Cell, ordered_backends, plan_cells
from attrbench.bench.yardstick import GroupYardsticks
from attrbench.plugin_manager import get_backends
from attrbench.workload.spec import preset


def test_cell_order_puts_yardsticks_first():
    known = get_backends()
    assert ordered_backends(["gqa-shared", "autodiff-free", "reference"], known) == [
        "reference",
        "autodiff-free",
        "gqa-shared",
    ]
    cells = plan_cells(["gqa-shared", "reference"], [200, 800], 2, known)
    assert [c.key for c in cells[:4]] == [
        ("reference", None, 200, 0),
        ("gqa-shared", None, 200, 0),
        ("reference", None, 200, 1),
        ("gqa-shared", None, 200, 1),
    ]
    assert len(cells) == 8


def test_yardstick_falls_back_to_autodiff_free():
    def pick(backend, status):
        group = GroupYardsticks(
            ["gqa-shared", "autodiff-free", "reference"], get_backends(), preset("tiny"), rerun=lambda cell: None
        )
        for name, value in status.items():
            group.record(name, value)
        return group.pick(backend)

    assert pick("gqa-shared", {"reference": "ok", "autodiff-free": "ok"}) == "reference"
    assert pick("autodiff-free", {"reference": "ok"}) == "reference"
    assert pick("gqa-shared", {"reference": "oom", "autodiff-free": "ok"}) == "autodiff-free"
    assert pick("autodiff-free", {"reference": "oom"}) is None
    assert pick("reference", {}) is None
    assert pick("gqa-shared", {"reference": "timeout", "autodiff-free": "error"}) is None


def test_results_file_helpers(tmp_path):
    from attrbench.bench.results import (
        cell_key,
        environment_info,
        load_results,
        new_cell,
        new_results,
        write_results_atomic,
    )
    from attrbench.errors import UsageError

    doc = new_results(
        {"name": "tiny", "hash": "h", "config": {}, "n_active": None}, {"device": "cpu"}, environment=environment_info()
    )
    doc["cells"].append(new_cell("reference", True, 200, 0, status="ok", wall_s=1.0))
    path = tmp_path / "sub" / "r.json"
    write_results_atomic(path, doc)
    assert load_results(path) == json.loads(json.dumps(doc))
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
    assert cell_key(doc["cells"][0]) == ("reference", None, 200, 0)  # written before prompt-length sweeps
    for content, fragment in [
        ("{", "not valid JSON"),
        ("[]", "not an attrbench results file"),
        (json.dumps({"schema_version": 2}), "schema_version 2"),
    ]:
        path.write_text(content)
        with pytest.raises(UsageError, match=fragment):
            load_results(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_results(tmp_path / "nope.json")


def test_truth_note_only_where_the_truth_did_not_complete():
    """The fp32 truth cell is never told that it did not complete (it is asked before its status is
    recorded); the others are told only when it really failed."""
    truth = Cell("reference@fp32", 100, 0, truth_of="reference")
    group = GroupYardsticks(
        ["reference", "gqa-shared"], get_backends(), preset("tiny"), rerun=lambda cell: None, truth=truth
    )
    assert group.truth_note(truth) is None
    group.record("reference@fp32", "timeout")
    note = group.truth_note(Cell("gqa-shared", 100, 0))
    assert note is not None and "timeout" in note
    group.record("reference@fp32", "ok")
    assert group.truth_note(Cell("gqa-shared", 100, 0)) is None


def test_a_yardstick_graph_is_pruned_once_for_all_its_cells(tmp_path, monkeypatch):
    """Every cell of a group gets its pruned-node Jaccard, and the yardstick's graph is pruned once for
    all of them (a 70,000-node prune takes ~30 s), not once per cell; its page cache is dropped after each."""
    import torch

    import attrbench.bench.yardstick as yardstick_module
    from attrbench.api import AttributeSettings
    from attrbench.graph.store import save_result
    from attrbench.workload.build import build_workload

    spec = preset("tiny")
    built = build_workload(spec)
    backends = get_backends()
    names = ["autodiff-free", "gqa-shared", "approximate-pruned"]
    group = GroupYardsticks(names, backends, spec, rerun=lambda cell: None)
    yardstick_prunes = []
    real = yardstick_module.pruned_nodes
    monkeypatch.setattr(yardstick_module, "pruned_nodes", lambda *a: yardstick_prunes.append(1) or real(*a))
    released = []  # graphs whose page cache is dropped after each comparison (the next cell starts without it)
    drop = yardstick_module.drop_cached_pages
    monkeypatch.setattr(yardstick_module, "drop_cached_pages", lambda d: released.append(d) or drop(d))
    figures = {}
    for name in names:
        backend = backends[name]
        result = backend.attribute(
            backend.prepare(built, "cpu", torch.float32), AttributeSettings(max_feature_nodes=150, batch_size=32)
        )
        out = group.compare(Cell(name, 150, 0), save_result(result, tmp_path / name))
        group.record(name, "ok")
        figures[name] = out.get("parity")
    assert figures["autodiff-free"] is None  # the yardstick itself
    assert figures["gqa-shared"]["pruned_node_jaccard"] == 1.0
    assert 0.9 <= figures["approximate-pruned"]["pruned_node_jaccard"] <= 1.0
    assert len(yardstick_prunes) == 1
    assert released.count(tmp_path / "autodiff-free") == len(names)  # the kept yardstick, after every cell


def test_enomem_from_a_mapping_is_oom():
    """Before: a 20 GB mmap refused by the cell's RLIMIT_DATA (``OSError: [Errno 12]``) was recorded
    ``error``, not ``oom``."""
    from attrbench.bench.worker import is_oom_text

    assert is_oom_text("Traceback ...\nOSError: [Errno 12] Cannot allocate memory")
    assert not is_oom_text("Traceback ...\nOSError: [Errno 2] No such file or directory: 'x'")
