"""Resume without losing or recomputing cells; Ctrl-C without orphans."""

from __future__ import annotations

import json
import time

import psutil
from cli_helpers import run_cli, subprocess_env


def test_resume_keeps_finished_cells(reference_run, tmp_path):
    _, data, _ = reference_run
    partial = dict(data)
    partial["cells"] = [c for c in data["cells"] if c["nodes"] == 200]
    resume = tmp_path / "partial.json"
    resume.write_text(json.dumps(partial))
    out = tmp_path / "resumed.json"
    proc = run_cli(
        [
            "run",
            "--backends",
            "reference,copy",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--resume",
            str(resume),
            "--output",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    ref = [c for c in result["cells"] if c["backend"] == "reference"]
    assert ref == partial["cells"]  # kept verbatim, not recomputed
    assert "reference nodes=200 repeat=0: kept from --resume" in proc.stderr
    assert "reference nodes=200 repeat=0: started" not in proc.stderr
    (copy,) = [c for c in result["cells"] if c["backend"] == "copy"]
    assert copy["status"] == "ok"
    # the yardstick graph was re-created silently for parity
    assert copy["parity"]["selected_jaccard"] == 1.0 and copy["parity"]["rel_frobenius"] <= 1e-6


def test_resume_with_other_settings_is_refused(reference_run, tmp_path):
    _, _, path = reference_run
    proc = run_cli(
        [
            "run",
            "--backends",
            "reference",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--batch-size",
            "64",
            "--resume",
            str(path),
            "--output",
            str(tmp_path / "x.json"),
        ],
        env=subprocess_env(None),
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "other settings" in proc.stderr


def test_interrupt_writes_finished_cells_and_leaves_no_orphans(tmp_path):
    out = tmp_path / "r.json"
    pid_file = tmp_path / "child.pid"
    proc = run_cli(
        [
            "run",
            "--backends",
            "reference,interrupt",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--no-warmup",
            "--output",
            str(out),
        ],
        env=subprocess_env(ATTRBENCH_TEST_PID_FILE=str(pid_file)),
    )
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    data = json.loads(out.read_text())
    assert [(c["backend"], c["status"]) for c in data["cells"]] == [("reference", "ok")]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the interrupted cell's child process is still running"
        time.sleep(0.1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".attrbench-graphs")]
