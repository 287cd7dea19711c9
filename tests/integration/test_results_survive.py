"""Results that survive (issue 19, "Lost"): a full disk, two runs on one output, --resume with fewer cells.

These run ``attrbench run`` in this process with the ``instant`` test launcher (every cell recorded ``oom``
at once), so only the runner and the results file are exercised.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from cli_helpers import invoke

from attrbench.bench import results as results_module
from attrbench.bench.lock import lock_path, output_lock
from attrbench.errors import UsageError
from attrbench.graph.store import META_FILE, load_result

RUN = ["run", "--launcher", "instant", "--model", "tiny", "--memory-limit", "0"]


@pytest.fixture
def instant(extra_plugins):
    extra_plugins()


def test_a_full_disk_keeps_the_finished_cells_and_stops_cleanly(instant, tmp_path, monkeypatch, capsys):
    """Before: four chained tracebacks; the cell just measured was in neither the file nor stdout, and the
    remaining cells never ran."""
    out = tmp_path / "r.json"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 3:  # the start-of-run write and the first cell succeed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(results_module.os, "fsync", fsync)
    code, stdout, err = invoke(
        capsys, [*RUN, "--backends", "reference,copy,gqa-shared", "--nodes", "200", "--output", str(out)]
    )
    monkeypatch.setattr(results_module.os, "fsync", real_fsync)
    assert code == 1, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "No space left on device" in line]) == 1
    unwritten = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(c["backend"], c["status"]) for c in unwritten] == [("copy", "oom")]
    kept = json.loads(out.read_text())  # the previous version, intact
    assert [c["backend"] for c in kept["cells"]] == ["reference"]
    assert "gqa-shared nodes=200 repeat=0: started" not in err  # stopped cleanly after the failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file or lock left


def test_a_disk_full_before_the_first_cell_stops_with_one_line(instant, tmp_path, monkeypatch, capsys):
    """Before: the write at the start of the run ended in an OSError traceback."""
    out = tmp_path / "r.json"

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results_module.os, "fsync", fsync)
    code, _, err = invoke(capsys, [*RUN, "--backends", "reference", "--nodes", "200", "--output", str(out)])
    assert code == 1, err
    assert "Traceback" not in err and "no cell has run" in err
    assert len([line for line in err.splitlines() if "No space left on device" in line]) == 1
    assert "reference nodes=200 repeat=0: started" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no results file, temporary file or lock left


def test_a_second_run_on_the_same_output_is_refused(instant, tmp_path, capsys):
    """Before: both runs exited 0 and one run's cells were gone."""
    out = tmp_path / "r.json"
    with output_lock(out):
        code, _, err = invoke(capsys, [*RUN, "--backends", "reference", "--nodes", "200", "--output", str(out)])
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1
        assert f"pid {os.getpid()}" in err and "another attrbench run" in err
        assert not out.exists()
        with pytest.raises(UsageError, match="another attrbench run"):
            with output_lock(out):
                pass
    assert not lock_path(out).exists()
    code, _, err = invoke(capsys, [*RUN, "--backends", "reference", "--nodes", "200", "--output", str(out)])
    assert code == 0, err  # free again once the first holder is done
    assert not lock_path(out).exists()


def test_resume_keeps_every_record_it_does_not_rerun(instant, tmp_path, capsys):
    """Before: a --resume with a subset of --nodes deleted the finished oom records of the others."""
    out = tmp_path / "r.json"
    code, _, err = invoke(capsys, [*RUN, "--backends", "reference,copy", "--nodes", "200,800", "--output", str(out)])
    assert code == 0, err
    first = json.loads(out.read_text())
    assert len(first["cells"]) == 4
    code, _, err = invoke(capsys, [*RUN, "--backends", "reference,copy", "--nodes", "200", "--resume", str(out)])
    assert code == 0, err
    after = json.loads(out.read_text())
    by_key = {(c["backend"], c["nodes"]): c for c in after["cells"]}
    assert set(by_key) == {("reference", 200), ("copy", 200), ("reference", 800), ("copy", 800)}
    for c in first["cells"]:
        if c["nodes"] == 800:
            assert by_key[(c["backend"], 800)] == c  # kept verbatim


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_graph_meta_is_loaded_without_pickle(tmp_path, monkeypatch):
    """Before: the parent loaded a cell's meta.pt with weights_only=False: any pickle in it ran."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    folder = tmp_path / "graph"
    folder.mkdir()
    import numpy as np

    np.save(folder / "adjacency.npy", np.zeros((2, 2), dtype=np.float32))
    torch.save({"n_layers": _Evil()}, folder / META_FILE)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_result(folder)
    assert not marker.exists()
