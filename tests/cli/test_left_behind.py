"""Nothing left behind, nothing escapes (issue 19): parent death, SIGHUP, attribute's scratch files, labels."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from cli_helpers import run_cli, subprocess_env


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _start_hanging_run(tmp_path: Path) -> tuple[subprocess.Popen, int, Path]:
    out = tmp_path / "r.json"
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attrbench.cli",
            "run",
            "--backends",
            "hang",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--no-warmup",
            "--output",
            str(out),
        ],
        env=subprocess_env(ATTRBENCH_TEST_PID_FILE=str(pid_file)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not pid_file.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the hang cell never started"
        time.sleep(0.2)
    return proc, int(pid_file.read_text()), out


def _scratch(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".attrbench-graphs-")]


def test_sigkill_of_the_parent_leaves_no_orphan_and_the_next_run_removes_its_scratch(tmp_path):
    """Before: the running child stayed as an orphan (17 s at 94% CPU, 1.6 GB) and the scratch graph folder
    next to the output was never removed, not even by --resume."""
    proc, child, out = _start_hanging_run(tmp_path)
    proc.kill()
    proc.communicate()
    assert _gone(child, 10), "the cell's child outlived its SIGKILLed parent"
    assert len(_scratch(tmp_path)) == 1  # the dead run could not clean up
    again = run_cli(
        [
            "run",
            "--launcher",
            "instant",
            "--backends",
            "reference",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--output",
            str(out),
        ]
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the graph folder of a run that did not finish" in again.stderr
    assert _scratch(tmp_path) == []


def test_sighup_is_handled_like_sigterm(tmp_path):
    """Before: SIGHUP killed the parent outright, leaving the child and the scratch folder."""
    proc, child, out = _start_hanging_run(tmp_path)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    assert _gone(child, 10)
    assert _scratch(tmp_path) == []
    assert json.loads(out.read_text())["cells"] == []


def test_attribute_lean_leaves_nothing_in_tmpdir(tmp_path):
    """Before: ``attribute --option edge_storage=lean`` left its adjacency-*.npy in $TMPDIR on every run."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = tmp_path / "out" / "g.pt"
    proc = run_cli(
        [
            "attribute",
            "--backend",
            "gqa-shared",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--option",
            "edge_storage=lean",
            "-o",
            str(out),
        ],
        env=subprocess_env(None, TMPDIR=str(tmpdir)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()
    # (torch may keep its own torchinductor_* cache there; nothing of attrbench's may stay)
    assert [p for p in tmpdir.rglob("*") if "adjacency" in p.name or "attrbench" in p.name] == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["g.pt"]


def test_a_label_never_becomes_a_path(tmp_path):
    """Before: ``--backends "gqa-shared@x=/../../../victim/escaped"`` wrote adjacency.npy and meta.pt outside
    the scratch folder."""
    out = tmp_path / "a" / "b" / "c" / "r.json"
    label = "gqa-shared@x=/../../../victim/escaped"
    proc = run_cli(
        ["run", "--backends", label, "--model", "tiny", "--nodes", "200", "--output", str(out)],
        env=subprocess_env(None),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cell,) = json.loads(out.read_text())["cells"]
    assert (cell["backend"], cell["status"]) == (label, "ok")
    written = list(tmp_path.rglob("*"))
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == ["a", "a/b", "a/b/c", "a/b/c/r.json"]
    assert not any((parent / "victim").exists() for parent in out.parents)
