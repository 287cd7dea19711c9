"""Failing cells are recorded and the others complete: raise, segfault, SIGKILL (oom), timeout, broken plugin."""

from __future__ import annotations

import json

import pytest
from cli_helpers import BROKEN_PLUGIN, TEST_PLUGINS, run_cli, subprocess_env


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("failing") / "r.json"
    env = subprocess_env(f"{TEST_PLUGINS},{BROKEN_PLUGIN}")
    proc = run_cli(
        [
            "run",
            "--backends",
            "reference,copy,raises,segfault,killed,sleeper",
            "--model",
            "tiny",
            "--nodes",
            "200",
            "--timeout",
            "15",
            "--output",
            str(out),
            "--format",
            "json",
        ],
        env=env,
    )
    data = json.loads(out.read_text()) if out.exists() else None
    return proc, data, out


def _cell(data, backend):
    (cell,) = [c for c in data["cells"] if c["backend"] == backend]
    return cell


def test_any_error_cell_exits_1_and_others_complete(failing_run):
    proc, data, _ = failing_run
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert [c["backend"] for c in data["cells"]] == ["reference", "copy", "raises", "segfault", "killed", "sleeper"]
    assert _cell(data, "reference")["status"] == "ok"
    assert _cell(data, "copy")["status"] == "ok"
    # stdout is the results JSON (--format json)
    assert json.loads(proc.stdout)["cells"] == data["cells"]


def test_exception_is_an_error_with_its_last_line(failing_run):
    cell = _cell(failing_run[1], "raises")
    assert cell["status"] == "error"
    assert cell["error"] == "RuntimeError: boom from the raises test backend"
    assert cell["wall_s"] is None and cell["parity"] is None


def test_segfault_is_an_error_naming_the_signal(failing_run):
    cell = _cell(failing_run[1], "segfault")
    assert cell["status"] == "error" and "SIGSEGV" in cell["error"]


def test_sigkill_is_oom(failing_run):
    cell = _cell(failing_run[1], "killed")
    assert cell["status"] == "oom" and "SIGKILL" in cell["error"]


def test_timeout(failing_run):
    cell = _cell(failing_run[1], "sleeper")
    assert cell["status"] == "timeout" and "--timeout 15" in cell["error"]
    assert "sleeper nodes=200 repeat=0: timeout" in failing_run[0].stderr


def test_copy_of_reference_has_perfect_parity(failing_run):
    parity = _cell(failing_run[1], "copy")["parity"]
    assert parity["against"] == "reference"
    assert parity["selected_jaccard"] == 1.0
    assert parity["rel_frobenius"] <= 1e-6 and parity["max_abs"] <= 1e-6
    assert parity["edge_recall"] == 1.0
    assert parity["pruned_node_jaccard"] == 1.0
    assert failing_run[1]["yardstick_note"] is None


def test_broken_plugin_is_reported_by_name_and_skipped(failing_run):
    proc = failing_run[0]
    warnings = [l for l in proc.stderr.splitlines() if BROKEN_PLUGIN in l]
    assert warnings and "skipped" in warnings[0] and "broken on purpose" in warnings[0]


def test_list_backends_with_broken_plugin():
    proc = run_cli(["list-backends"], env=subprocess_env(f"{BROKEN_PLUGIN},{TEST_PLUGINS}"))
    assert proc.returncode == 0
    assert BROKEN_PLUGIN in proc.stderr and "Traceback" not in proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()]
    assert "reference" in names and "copy" in names
