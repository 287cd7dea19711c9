"""Bad values, each written as the failure it was (issue 19, "Bad values pass or crash"), now exit 2 with one
line naming the problem (or, for the gate, never a pass)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cli_helpers import invoke

from attrbench.bench.results import load_results
from attrbench.errors import UsageError
from attrbench.formatting import md_code

BASELINE = Path(__file__).resolve().parents[2] / "reports" / "baseline.json"


def _one_line_exit_2(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def _first_ok(doc: dict, backend: str | None = None) -> dict:
    return next(c for c in doc["cells"] if c["status"] == "ok" and (backend is None or c["backend"] == backend))


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc, allow_nan=True))
    return path


def _hostile_docs() -> dict[str, tuple[str, str]]:
    """name -> (file text, fragment of the expected error line)."""
    base = json.loads(BASELINE.read_text())
    out: dict[str, tuple[str, str]] = {}
    for name, value, fragment in (
        ("nan", math.nan, "NaN, not a finite number"),
        ("inf", math.inf, "Infinity, not a finite number"),
        ("zero", 0.0, "wall_s"),
    ):
        doc = json.loads(json.dumps(base))
        _first_ok(doc, "gqa-shared")["wall_s"] = value
        out[f"wall_s {name}"] = (json.dumps(doc, allow_nan=True), fragment)
    text = json.dumps(base).replace('"wall_s": ', '"wall_s": 1e400, "x": ', 1)
    out["wall_s 1e400"] = (text, "Infinity, not a finite number")
    doc = json.loads(json.dumps(base))
    doc["cells"][0]["nodes"] = "800"
    out["nodes as a string"] = (json.dumps(doc), "cells[0].nodes")
    doc = json.loads(json.dumps(base))
    doc["cells"][0]["nodes"] = 10**100
    out["huge node count"] = (json.dumps(doc), "cells[0].nodes")
    out["5,000-digit integer"] = (
        json.dumps(base).replace('"nodes": 800', '"nodes": ' + "9" * 5000, 1),
        "cannot be read",
    )
    out["deep nesting"] = (
        json.dumps(base).replace('"info": {', '"info": {"deep": ' + "[" * 50_000 + "]" * 50_000 + ", ", 1),
        "nested too deeply",
    )
    doc = json.loads(json.dumps(base))
    doc["cells"] = {"not": "a list"}
    out["cells not a list"] = (json.dumps(doc), "cells")
    doc = json.loads(json.dumps(base))
    doc["settings"]["repeats"] = 1e8
    out["settings.repeats a float"] = (json.dumps(doc), "settings.repeats")
    return out


@pytest.mark.parametrize("case", list(_hostile_docs()))
@pytest.mark.parametrize("command", ["report", "gate", "load"])
def test_hostile_results_files_exit_2_with_one_line(case, command, tmp_path, capsys):
    """Before: report, gate and resume gave tracebacks; the gate passed NaN/Inf wall times ("nanx ... ok")
    and dropped the row of a 0 wall time."""
    text, fragment = _hostile_docs()[case]
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    if command == "load":  # what --resume reads through
        with pytest.raises(UsageError, match="bad.json") as exc:
            load_results(bad)
        assert fragment in str(exc.value) and "\n" not in str(exc.value)
        return
    args = ["report", str(bad)] if command == "report" else ["gate", "--baseline", str(BASELINE), str(bad)]
    code, _, err = invoke(capsys, args)
    _one_line_exit_2(code, err, str(bad), fragment)


def test_the_baseline_itself_passes_the_schema(capsys):
    code, out, err = invoke(capsys, ["gate", "--baseline", str(BASELINE), str(BASELINE)])
    assert code == 0, err
    assert "gate passed" in out


@pytest.mark.parametrize(
    "args",
    [
        ["report", "/dev/zero"],
        ["gate", "--baseline", "/dev/zero", str(BASELINE)],
        ["run", "--model", "tiny", "--resume", "/dev/zero"],
        ["run", "--workload", "/dev/zero"],
    ],
)
def test_dev_zero_as_an_input_file_is_refused_without_reading_it(args, capsys):
    """Before: read until memory ran out."""
    code, _, err = invoke(capsys, args)
    _one_line_exit_2(code, err, "/dev/zero", "not a regular file")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "1e30"),
        ("--memory-limit", "nan"),
        ("--memory-limit", "inf"),
        ("--memory-limit", "1e30"),
        ("--repeats", "100000000"),
        ("--logit-prob", "nan"),
        ("--batch-size", "9" * 30),
        ("--nodes", "9" * 30),
    ],
)
def test_numeric_options_are_finite_and_in_range(flag, value, capsys):
    """Before: --timeout nan was accepted and never enforced; --timeout inf, --memory-limit nan|inf|1e30 raised
    OverflowError; --repeats 1e8 built the whole plan in memory."""
    code, _, err = invoke(capsys, ["run", "--model", "tiny", "--nodes", "200", flag, value])
    _one_line_exit_2(code, err, flag)


def test_plan_size_is_capped_with_a_clear_message(capsys):
    nodes = ",".join(str(n) for n in range(100, 1100, 50))  # 20 node counts
    code, _, err = invoke(capsys, ["run", "--model", "tiny", "--nodes", nodes, "--repeats", "1000"])
    _one_line_exit_2(code, err, "cells", "at most 10,000")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ATTRBENCH_PROGRESS_INTERVAL", "nan"),
        ("ATTRBENCH_PROGRESS_INTERVAL", "inf"),
        ("ATTRBENCH_CACHE", "/dev/null/cache"),
        ("ATTRBENCH_GRAPH_DIR", "/dev/null/graphs"),
        ("ATTRBENCH_LARGE_PRUNE_PARITY", "yes"),
    ],
)
def test_bad_environment_variables_are_named(name, value, monkeypatch, capsys):
    """Before: ATTRBENCH_PROGRESS_INTERVAL=inf raised OverflowError, nan was silently never printed; a bad
    ATTRBENCH_CACHE or ATTRBENCH_GRAPH_DIR failed without naming the variable."""
    monkeypatch.setenv(name, value)
    code, _, err = invoke(capsys, ["list-backends"])
    _one_line_exit_2(code, err, name)


def test_gate_max_memory_growth_nan_is_refused(capsys):
    code, _, err = invoke(capsys, ["gate", "--baseline", str(BASELINE), str(BASELINE), "--max-memory-growth", "nan"])
    _one_line_exit_2(code, err, "memory growth")


def test_labels_are_escaped_in_markdown(tmp_path, capsys):
    """A backend label is data: in markdown it cannot close its code span or break a table row; a label with
    a line break is refused by the schema."""
    hostile = "gqa-shared@x=`| <b>x</b> `` # injected"
    doc = json.loads(BASELINE.read_text())
    for cell in doc["cells"]:
        if cell["backend"] == "gqa-shared":
            cell["backend"] = hostile
    path = _write(tmp_path / "r.json", doc)
    code, out, err = invoke(capsys, ["report", str(path), "--format", "markdown"])
    assert code == 0, err
    assert md_code(hostile) in out
    unescaped = [line.replace("\\|", "") for line in out.splitlines() if line.startswith("|")]
    header_pipes = unescaped[0].count("|")
    rows = [line for line in unescaped if "gqa-shared@x=" in line]
    assert rows and all(line.count("|") == header_pipes for line in rows)
    assert md_code("a`b") == "``a`b``" and md_code("x|y") == "`x\\|y`"

    for cell in doc["cells"]:
        if cell["backend"] == hostile:
            cell["backend"] = "gqa-shared\n# injected"
    code, _, err = invoke(capsys, ["report", str(_write(tmp_path / "r2.json", doc)), "--format", "markdown"])
    _one_line_exit_2(code, err, "backend")
