"""Graph export (.pt and pruned JSON) and the ``attrbench attribute`` command."""

from __future__ import annotations

import importlib
import json
import re
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import invoke

NODES = 200
ARGS = ["--backend", "gqa-shared", "--nodes", str(NODES), "--model", "tiny", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny():
    """The tiny workload and gqa-shared's graph of it, computed in this process."""
    from attrbench.api import AttributeSettings
    from attrbench.plugin_manager import get_backends
    from attrbench.workload.build import build_workload
    from attrbench.workload.spec import preset

    built = build_workload(preset("tiny"))
    backend = get_backends()["gqa-shared"]
    result = backend.attribute(
        backend.prepare(built, "cpu", torch.float32), AttributeSettings(max_feature_nodes=NODES, batch_size=64)
    )
    return built, result


def test_attribute_pt(tmp_path, capsys, tiny):
    from circuit_tracer.graph import Graph, prune_graph

    _, result = tiny
    path = tmp_path / "g.pt"
    code, out, err = invoke(capsys, ["attribute", *ARGS, "-o", str(path)])
    assert code == 0, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "gqa-shared" in err and f"{NODES} nodes selected" in err and "g.pt" in err
    graph = Graph.from_pt(str(path))
    n = NODES + 4 * 16 + 16 + len(graph.logit_targets)
    assert graph.adjacency_matrix.shape == (n, n) and len(graph.selected_features) == NODES
    assert torch.equal(graph.adjacency_matrix, result.adjacency_matrix)
    assert torch.equal(graph.active_features, result.active_features)
    assert graph.logit_token_ids.tolist() == result.logit_token_ids.tolist()
    assert graph.scan and graph.cfg.n_layers == 4
    pruned = prune_graph(graph)
    assert pruned.node_mask.shape == (n,) and 0 < int(pruned.node_mask.sum()) < n


def _create_graph_files_json(graph, tokenizer, tmp_path):
    """circuit-tracer's own create_graph_files output (its AutoTokenizer pointed at the local tokenizer)."""
    module = importlib.import_module("circuit_tracer.utils.create_graph_files")
    saved = module.AutoTokenizer
    module.AutoTokenizer = SimpleNamespace(from_pretrained=lambda *_a, **_k: tokenizer)
    try:
        module.create_graph_files(graph, "g", str(tmp_path / "ct"))
    finally:
        module.AutoTokenizer = saved
    return json.loads((tmp_path / "ct" / "g.json").read_text())


def test_attribute_json(tmp_path, capsys, tiny):
    from attrbench.graph.interop import to_circuit_tracer_graph

    built, result = tiny
    path = tmp_path / "g.json"
    code, _, err = invoke(capsys, ["attribute", *ARGS, "--format", "json", "--slug", "g", "-o", str(path)])
    assert code == 0, err
    doc = json.loads(path.read_text())
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    meta = doc["metadata"]
    assert meta["slug"] == "g" and meta["scan"].startswith("attrbench-") and meta["node_threshold"] == 0.8
    assert len(meta["prompt_tokens"]) == 16 and meta["prompt"]
    assert set(doc["qParams"]) >= {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    n_layers = 4
    token_ids = result.input_tokens.tolist()
    patterns = {
        "cross layer transcoder": re.compile(r"^(\d+)_(\d+)_(\d+)$"),
        "mlp reconstruction error": re.compile(r"^0_(\d+)_(\d+)$"),
        "embedding": re.compile(r"^E_(\d+)_(\d+)$"),
        "logit": re.compile(rf"^{n_layers + 1}_(\d+)_(\d+)$"),
    }
    ids = set()
    kinds = set()
    for node in doc["nodes"]:
        m = patterns[node["feature_type"]].match(node["node_id"])
        assert m, node["node_id"]
        kinds.add(node["feature_type"])
        if node["feature_type"] == "embedding":
            assert token_ids[int(m.group(2))] == int(m.group(1))
        if node["feature_type"] == "logit":
            assert int(m.group(1)) in result.logit_token_ids.tolist() and int(m.group(2)) == 15
        ids.add(node["node_id"])
    assert len(ids) == len(doc["nodes"]) and {"cross layer transcoder", "embedding", "logit"} <= kinds
    assert doc["links"] and all(link["source"] in ids and link["target"] in ids for link in doc["links"])
    # exactly what circuit-tracer's create_graph_files writes for the same graph
    reference = _create_graph_files_json(to_circuit_tracer_graph(result, built), built.tokenizer, tmp_path)
    assert doc == reference


def test_json_blockwise_matches_one_block(tiny):
    from attrbench.graph.export import graph_json_model

    built, result = tiny
    one = graph_json_model(result, built).model_dump()
    blocks = graph_json_model(result, built, block_rows=7).model_dump()
    assert one["links"] == blocks["links"] and one["metadata"] == blocks["metadata"]
    assert [n["node_id"] for n in one["nodes"]] == [n["node_id"] for n in blocks["nodes"]]
    for a, b in zip(one["nodes"], blocks["nodes"], strict=False):  # influences: blockwise sums differ in the last bits
        assert a["influence"] == pytest.approx(b["influence"], abs=1e-6) if a["influence"] is not None else b == a


def test_pt_from_memory_mapped_result(tmp_path, tiny):
    from circuit_tracer.graph import Graph

    from attrbench.graph.export import save_graph_pt
    from attrbench.graph.store import load_result, save_result

    built, result = tiny
    mapped = load_result(save_result(result, tmp_path / "saved"))
    path = save_graph_pt(mapped, built.spec, tmp_path / "m.pt")  # a spec is enough: no weights are built
    assert torch.equal(Graph.from_pt(str(path)).adjacency_matrix, result.adjacency_matrix)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--backend", "no-such-backend", "--nodes", "10"], "unknown backend"),
        (["--backend", "gqa-shared", "--nodes", "0"], "--nodes must be a positive integer"),
        (["--backend", "gqa-shared", "--nodes", "10", "--model", "tiny", "--option", "nope=1"], "--option nope"),
        (["--backend", "gqa-shared", "--nodes", "999999", "--model", "tiny"], "active features"),
        (["--backend", "gqa-shared", "--nodes", "10", "--format", "xml"], "xml"),
    ],
)
def test_attribute_bad_usage(tmp_path, capsys, args, message):
    code, _, err = invoke(capsys, ["attribute", *args, "-o", str(tmp_path / "x.pt")])
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_attribute_help_documents_every_option(capsys):
    code, out, _ = invoke(capsys, ["attribute", "--help"])
    assert code == 0
    for flag in (
        "--backend",
        "--nodes",
        "--model",
        "--workload",
        "--device",
        "--dtype",
        "--batch-size",
        "--update-interval",
        "--max-logits",
        "--logit-prob",
        "--option",
        "--format",
        "--output",
    ):
        assert flag in out
