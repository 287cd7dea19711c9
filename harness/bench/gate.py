"""The regression gate: compare a current results file against a baseline.

Only ratios measured within one run are compared (each backend's speedup = reference wall / backend wall,
and memory ratio = backend peak / reference peak, both from the same file), never absolute seconds, so a
baseline recorded on another machine of the same device kind still gates meaningfully. Parity is judged
on the current file alone with the verdicts' checks (:mod:`attrbench.graph.verdicts`: fixed thresholds, or in
bf16 the distance from the fp32 truth next to circuit-tracer's own): a broken graph always fails.

Exit codes: 0 pass, 1 regression or broken parity; files that cannot be compared raise
:class:`attrbench.errors.NotComparableError` (the CLI maps it to 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tabulate import tabulate

from attrbench.bench.growth import lengths_of
from attrbench.bench.results import load_results, validate_results
from attrbench.bench.summary import REFERENCE, status_text, summarise
from attrbench.errors import NotComparableError, UsageError
from attrbench.formatting import fmt_num, fmt_ratio, md_code, short_error
from attrbench.graph.verdicts import TRUTH, YARDSTICK, verdict_checks

OK, REGRESSED, BROKEN = "ok", "REGRESSED", "BROKEN"


def fingerprint(result: dict) -> dict:
    """What must match for two runs to be comparable."""
    settings = result.get("settings") or {}
    cells = result.get("cells") or []
    device = str(settings.get("device") or "cpu").split(":")[0]
    return {
        "workload hash": (result.get("workload") or {}).get("hash"),
        "dtype": settings.get("dtype"),
        "device kind": device,
        "backends": sorted({str(c.get("backend")) for c in cells}),
        "nodes": sorted(
            {c.get("nodes") for c in cells}, key=lambda n: (0, n) if isinstance(n, (int, float)) else (1, str(n))
        ),
        "prompt lengths": lengths_of(result),
    }


def check_comparable(baseline: dict, current: dict) -> None:
    """Raise NotComparableError naming every fingerprint difference."""
    a, b = fingerprint(baseline), fingerprint(current)
    reasons = [f"{key} differs (baseline {a[key]!r}, current {b[key]!r})" for key in a if a[key] != b[key]]
    if reasons:
        raise NotComparableError("not comparable: " + "; ".join(reasons))


def _change(base: float | None, cur: float | None) -> str:
    if base is None or cur is None or base == 0:
        return "-"
    return f"{(cur / base - 1) * 100:+.1f}%"


class _GateRows(list):
    """The gate's rows: one per (backend, n_tokens, nodes, figure) judged; in runs over several prompt
    lengths the nodes column reads ``NODES @TOKENS``."""

    sweep = False

    def add(self, row: dict, figure: str, base: Any, cur: Any, change: str, verdict: str, note: str = "") -> None:
        self.append(
            dict(
                backend=row["backend"],
                nodes=row["nodes"]
                if row.get("n_tokens") is None or not self.sweep
                else f"{row['nodes']} @{row['n_tokens']}",
                figure=figure,
                baseline=base,
                current=cur,
                change=change,
                verdict=verdict,
                note=note,
            )
        )


def _status_rows(out: _GateRows, base: dict, cur: dict) -> None:
    if base["status"] == "ok" and cur["status"] != "ok":
        out.add(cur, "status", status_text(base), cur["status"], "-", REGRESSED, short_error(cur.get("error")))
    elif base["status"] == "ok" and not base["failed_statuses"] and cur["failed_statuses"]:
        # some repeats failed where none did before (an intermittent out-of-memory or timeout)
        failed = f"{len(cur['failed_statuses'])} repeat(s) {'/'.join(sorted(set(cur['failed_statuses'])))}"
        out.add(cur, "status", status_text(base), status_text(cur), "-", REGRESSED, failed)
    else:
        out.add(cur, "status", status_text(base), status_text(cur), "-", OK)


def _ratio_rows(out: _GateRows, base: dict, cur: dict, max_speedup_drop: float, max_memory_growth: float) -> None:
    """Speedup (smaller is worse) and memory ratio (larger is worse), both measured within each run."""
    if base["speedup"] is not None and cur["speedup"] is not None:
        bad = cur["speedup"] < base["speedup"] * (1 - max_speedup_drop)
        out.add(
            cur,
            "speedup",
            fmt_ratio(base["speedup"]),
            fmt_ratio(cur["speedup"]),
            _change(base["speedup"], cur["speedup"]),
            REGRESSED if bad else OK,
        )
    if base["mem_ratio"] is not None and cur["mem_ratio"] is not None:
        bad = cur["mem_ratio"] > base["mem_ratio"] * (1 + max_memory_growth)
        out.add(
            cur,
            "memory ratio",
            fmt_ratio(base["mem_ratio"]),
            fmt_ratio(cur["mem_ratio"]),
            _change(base["mem_ratio"], cur["mem_ratio"]),
            REGRESSED if bad else OK,
        )


def _parity_rows(out: _GateRows, base: dict, cur: dict, dtype: str | None) -> None:
    """Parity judged on the current file with the verdicts' own checks (:mod:`attrbench.graph.verdicts`)."""
    if cur["status"] != "ok" or cur["parity_verdict"] in (YARDSTICK, TRUTH):
        return
    rule, checks = verdict_checks(cur, dtype, cur.get("reference_truth"))
    base_parity = (base.get("truth_parity") if rule == "fp32 truth" else base.get("parity")) or {}
    for figure, value, threshold, passed, cmp in checks:
        base_value = base_parity.get(figure.split(" ")[0])
        out.add(
            cur,
            figure,
            fmt_num(base_value),
            fmt_num(value),
            _change(base_value, value),
            OK if passed else BROKEN,
            f"{cmp} {threshold:g}",
        )
    if not checks and base.get("parity") and base["status"] == "ok":
        out.add(cur, "parity", "checked", "not checked", "-", REGRESSED, "parity missing from current run")


def _compare_rows(baseline: dict, current: dict, max_speedup_drop: float, max_memory_growth: float) -> list[dict]:
    base_rows = {(r["backend"], r["n_tokens"], r["nodes"]): r for r in summarise([baseline])}
    dtype = (current.get("settings") or {}).get("dtype")
    out = _GateRows()
    out.sweep = len(lengths_of(current)) > 1
    for cur in summarise([current]):
        base = base_rows.get((cur["backend"], cur["n_tokens"], cur["nodes"]))
        if base is None:  # cannot happen after check_comparable, kept for safety
            continue
        _status_rows(out, base, cur)
        if cur["backend"] == REFERENCE:
            continue
        _ratio_rows(out, base, cur, max_speedup_drop, max_memory_growth)
        _parity_rows(out, base, cur, dtype)
    return list(out)


def run_gate(
    baseline: dict,
    current: dict,
    max_speedup_drop: float = 0.25,
    max_memory_growth: float = 0.25,
    *,
    format: str = "table",
) -> tuple[int, str]:
    """Compare ``current`` against ``baseline``; return (exit code, report text).

    Exit 1 when a backend's speedup falls below ``baseline * (1 - max_speedup_drop)``, its memory ratio
    rises above ``baseline * (1 + max_memory_growth)``, a cell that was ok is no longer ok, or parity is
    broken (exact: selected Jaccard < 1 or relative error above 1e-4 in float32 / 2e-2 in bfloat16;
    approximate: edge recall < 0.99 or pruned-node Jaccard < 0.95). Raises NotComparableError when the
    workload hash, dtype, device kind, backend set, node counts or prompt lengths differ.
    """
    if format not in ("table", "markdown"):
        raise UsageError(f"unknown gate output format {format!r}; choose table or markdown")
    if not 0 <= max_speedup_drop < 1:
        raise UsageError(f"max speedup drop must be in [0, 1), got {max_speedup_drop}")
    if not (0 <= max_memory_growth and math.isfinite(max_memory_growth)):
        raise UsageError(f"max memory growth must be a finite number >= 0, got {max_memory_growth}")
    # the schema refuses NaN/Inf/0 wall times and wrong types before any ratio is formed
    baseline = validate_results(baseline, "baseline")
    current = validate_results(current, "current results")
    check_comparable(baseline, current)
    rows = _compare_rows(baseline, current, max_speedup_drop, max_memory_growth)
    regressed = sum(r["verdict"] == REGRESSED for r in rows)
    broken = sum(r["verdict"] == BROKEN for r in rows)
    code = 1 if regressed or broken else 0

    headers = ["backend", "nodes", "figure", "baseline", "current", "change", "verdict", "note"]
    table = [
        [
            r["backend"],
            str(r["nodes"]),
            r["figure"],
            str(r["baseline"]),
            str(r["current"]),
            r["change"],
            r["verdict"],
            r["note"],
        ]
        for r in rows
    ]
    limits = (
        f"limits: speedup may drop {max_speedup_drop:.0%}, memory ratio may grow {max_memory_growth:.0%}; "
        "ratios are measured within each run"
    )
    if code:
        verdict = f"gate FAILED: {regressed} regressed, {broken} broken of {len(rows)} figures compared"
    else:
        verdict = f"gate passed: {len(rows)} figures compared"
    if format == "markdown":
        table = [[md_code(row[0]), *(cell.replace("|", "\\|") for cell in row[1:])] for row in table]
        body = tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)
        text = f"## attrbench gate\n\n**{verdict}**\n\n{limits}\n\n{body}\n"
    else:
        body = tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)
        text = f"{body}\n\n{limits}\n{verdict}\n"
    return code, text


def load_and_gate(
    baseline_path: str | Path,
    current_path: str | Path,
    max_speedup_drop: float = 0.25,
    max_memory_growth: float = 0.25,
    *,
    format: str = "table",
) -> tuple[int, str]:
    """Load two results files (a missing, corrupt or wrong-schema file is a one-line UsageError) and gate."""
    baseline = load_results(baseline_path)
    current = load_results(current_path)
    return run_gate(baseline, current, max_speedup_drop, max_memory_growth, format=format)
