"""``--launcher ray`` on a local Ray cluster these tests start (loopback only): the same cells and figures as
the ``process`` launcher, lost workers recorded and retried, and --resume after a killed driver."""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import TEST_PLUGINS, run_cli, subprocess_env

ray = pytest.importorskip("ray", reason="the ray launcher tests need the 'ray' extra (pip install 'attrbench[ray]')")

RAY_PLUGINS = f"{TEST_PLUGINS},ray_plugins_for_tests"
SWEEP = ["--model", "tiny", "--nodes", "200", "--batch-size", "64", "--no-warmup"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Ray cluster on loopback offering one attrbench cell slot; its address."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = subprocess_env(RAY_PLUGINS, RAY_AUTH_MODE="disabled")
    started = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--resources",
            json.dumps({"attrbench_cell": 1}),
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _env(tmp_path: Path) -> dict[str, str]:
    return subprocess_env(RAY_PLUGINS, RAY_AUTH_MODE="disabled", ATTRBENCH_TEST_MARKER_DIR=str(tmp_path))


def _cells(path: Path) -> dict[tuple[str, int, int], dict]:
    return {(c["backend"], c["nodes"], c["repeat"]): c for c in json.loads(path.read_text())["cells"]}


def test_ray_and_process_launchers_give_the_same_cells(cluster, tmp_path):
    backends = ["--backends", "reference,gqa-shared,approximate-pruned", "--repeats", "2"]
    by_launcher = {}
    for launcher in ("process", "ray"):
        out = tmp_path / f"{launcher}.json"
        extra = ["--ray-address", cluster] if launcher == "ray" else []
        proc = run_cli(
            ["run", *SWEEP, *backends, "--launcher", launcher, *extra, "--output", str(out)], env=_env(tmp_path)
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        by_launcher[launcher] = _cells(out)
    process, via_ray = by_launcher["process"], by_launcher["ray"]
    assert process.keys() == via_ray.keys() and len(process) == 6
    for key, cell in process.items():
        other = via_ray[key]
        assert (
            (cell["status"], cell["n_selected"], cell["n_active"])
            == (other["status"], other["n_selected"], other["n_active"])
            == ("ok", 200, 1213)
        )
        assert other["info"]["placement"]["node"] == socket.gethostname()
        if key[0] == "reference":
            continue
        for figure in ("selected_jaccard", "edge_recall", "pruned_node_jaccard"):
            assert cell["parity"][figure] == other["parity"][figure], (key, figure)
        assert math.isclose(
            cell["parity"]["rel_frobenius"], other["parity"]["rel_frobenius"], rel_tol=1e-6, abs_tol=1e-12
        )


def test_a_lost_worker_is_recorded_retried_and_the_others_complete(cluster, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(
        [
            "run",
            *SWEEP,
            "--backends",
            "reference,ray-killer,ray-killer-once,gqa-shared",
            "--launcher",
            "ray",
            "--ray-address",
            cluster,
            "--retries",
            "1",
            "--output",
            str(out),
        ],
        env=_env(tmp_path),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # the cell that always loses its worker is an error
    cells = _cells(out)
    assert cells[("ray-killer", 200, 0)]["status"] == "error"
    assert cells[("ray-killer", 200, 0)]["error"].startswith("worker lost")
    assert proc.stderr.count("ray-killer nodes=200 repeat=0: worker lost") == 1  # retried once, then recorded
    assert "ray-killer-once nodes=200 repeat=0: worker lost" in proc.stderr and "retrying (1/1)" in proc.stderr
    assert cells[("ray-killer-once", 200, 0)]["status"] == "ok"  # the retry completed
    assert cells[("ray-killer-once", 200, 0)]["parity"]["selected_jaccard"] == 1.0
    assert cells[("reference", 200, 0)]["status"] == cells[("gqa-shared", 200, 0)]["status"] == "ok"


def test_resume_after_a_killed_driver_reruns_nothing_that_finished(cluster, tmp_path):
    out = tmp_path / "r.json"
    args = [
        "run",
        *SWEEP,
        "--backends",
        "reference,gqa-shared",
        "--nodes",
        "100,200,300",
        "--launcher",
        "ray",
        "--ray-address",
        cluster,
        "--output",
        str(out),
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", "attrbench.cli", *args],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if out.exists() and sum(c["status"] == "ok" for c in json.loads(out.read_text() or "{}").get("cells", [])) >= 2:
            break
        assert driver.poll() is None, "the driver finished before it could be killed"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    finished = [k for k, c in _cells(out).items() if c["status"] == "ok"]
    assert 2 <= len(finished) < 6
    proc = run_cli(
        [
            "run",
            *SWEEP,
            "--backends",
            "reference,gqa-shared",
            "--nodes",
            "100,200,300",
            "--launcher",
            "ray",
            "--ray-address",
            cluster,
            "--resume",
            str(out),
        ],
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for backend, nodes, repeat in finished:
        assert f"{backend} nodes={nodes} repeat={repeat}: kept from --resume" in proc.stderr
        assert f"{backend} nodes={nodes} repeat={repeat}: started" not in proc.stderr
    assert all(c["status"] == "ok" for c in _cells(out).values()) and len(_cells(out)) == 6
    for leftover in tmp_path.glob(".attrbench-graphs-*"):
        shutil.rmtree(leftover)  # the killed driver's scratch folder (cleaned by the next run once #19 lands)
