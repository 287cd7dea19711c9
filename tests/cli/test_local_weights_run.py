"""``run`` on local model and transcoder folders, offline, with parity."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli, subprocess_env

from attrbench.workload.build import build_workload, save_workload
from attrbench.workload.spec import preset

PROMPT = "t1 t5 t9 t17 t33 t2 t8 t100"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local") / "tiny"
    save_workload(build_workload(preset("tiny"), use_cache=False), folder)
    return folder


def test_run_local_folders_parity_offline(saved, tmp_path):
    out = tmp_path / "r.json"
    # any attempt to reach a hub would go to a closed port and fail the run
    env = subprocess_env(None, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    proc = run_cli(
        [
            "run",
            "--model",
            str(saved / "model"),
            "--transcoders",
            str(saved / "transcoders"),
            "--prompt",
            PROMPT,
            "--backends",
            "reference,gqa-shared",
            "--nodes",
            "50",
            "--batch-size",
            "64",
            "--output",
            str(out),
        ],
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["workload"]["config"]["source"]["prompt"] == PROMPT
    cells = {c["backend"]: c for c in doc["cells"]}
    assert cells["reference"]["status"] == "ok" and cells["gqa-shared"]["status"] == "ok", proc.stderr[-3000:]
    parity = cells["gqa-shared"]["parity"]
    assert parity["against"] == "reference"
    assert parity["selected_jaccard"] == 1.0 and parity["rel_frobenius"] <= 1e-4
