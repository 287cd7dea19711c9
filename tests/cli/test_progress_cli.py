"""``run`` and ``attribute`` print progress lines of long work."""

from __future__ import annotations

import re

import pytest
from cli_helpers import run_cli, subprocess_env

from attrbench.workload.build import build_workload
from attrbench.workload.spec import preset


@pytest.fixture(scope="module")
def tiny():
    return build_workload(preset("tiny"))


def test_run_prints_progress_lines_of_a_long_cell(tmp_path):
    env = subprocess_env(ATTRBENCH_PROGRESS_INTERVAL="0.25")
    proc = run_cli(
        [
            "run",
            "--backends",
            "chatty",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--no-warmup",
            "--output",
            str(tmp_path / "r.json"),
        ],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = re.findall(r"\[1/1\] chatty nodes=200 repeat=0: [0-9.]+ s: step (\d)/5", proc.stderr)
    assert steps and steps == sorted(steps), proc.stderr

    quiet = run_cli(
        [
            "run",
            "--backends",
            "chatty",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--no-warmup",
            "--output",
            str(tmp_path / "q.json"),
        ],
        env=subprocess_env(ATTRBENCH_PROGRESS_INTERVAL="0"),
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "step" not in quiet.stderr


def test_attribute_prints_progress_lines(tmp_path):
    proc = run_cli(
        [
            "attribute",
            "--backend",
            "gqa-shared",
            "--model",
            "tiny",
            "--nodes",
            "1000",
            "--batch-size",
            "16",
            "-o",
            str(tmp_path / "g.pt"),
        ],
        env=subprocess_env(ATTRBENCH_PROGRESS_INTERVAL="0.01"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"attrbench: gqa-shared: [0-9.]+ m?s: feature rows [\d,]+/1,000\n", proc.stderr), proc.stderr
