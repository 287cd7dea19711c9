"""``attrbench attribute`` never writes a graph that breaks the result contract (issue 15)."""

from __future__ import annotations

from cli_helpers import invoke


def test_attribute_refuses_a_malformed_graph(extra_plugins, tmp_path, capsys):
    extra_plugins()
    out = tmp_path / "graph.pt"
    code, _, err = invoke(
        capsys,
        [
            "attribute",
            "--backend",
            "malformed",
            "--model",
            "tiny",
            "--nodes",
            "50",
            "--batch-size",
            "64",
            "-o",
            str(out),
        ],
    )
    assert code == 1
    assert "invalid graph" in err and "expected (" in err and "nothing written" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
