"""The per-cell --memory-limit makes an allocation beyond it a clean ``oom``."""

from __future__ import annotations

import json

from cli_helpers import run_cli, subprocess_env

from attrbench.bench.estimate import GIB


def test_allocation_beyond_memory_limit_is_oom(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(
        [
            "run",
            "--backends",
            "gqa-shared,hog",
            "--model",
            "tiny",
            "--nodes",
            "50",
            "--batch-size",
            "64",
            "--memory-limit",
            "6",
            "--output",
            str(out),
        ],
        env=subprocess_env(ATTRBENCH_TEST_HOG_GIB="16"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {c["backend"]: c for c in json.loads(out.read_text())["cells"]}
    assert cells["hog"]["status"] == "oom", cells["hog"]
    assert "allocate" in cells["hog"]["error"] or "MemoryError" in cells["hog"]["error"]
    assert cells["gqa-shared"]["status"] == "ok"
    assert json.loads(out.read_text())["settings"]["memory_limit_bytes"] == 6 * GIB
