"""The prompt-length section of the text reporters: each backend's cost curve and growth exponents.

For every run over several prompt lengths (``attrbench run --n-tokens 64,256,...``): one line per backend
and node count, with wall time and peak memory at each length (``oom`` / ``timeout`` where it did not
complete) and the fitted exponents of :mod:`attrbench.bench.growth`. Runs over one length add nothing.
"""

from __future__ import annotations

from tabulate import tabulate

from attrbench.bench.growth import growth_records, lengths_of
from attrbench.bench.summary import is_cuda, run_labels
from attrbench.formatting import fmt_bytes, fmt_seconds, md_code


def fmt_exponent(value: float | None) -> str:
    """An exponent with two decimals, ``-`` where there was nothing to fit."""
    return "-" if value is None else f"{value:.2f}"


def _point_text(point: dict | None, key: str) -> str:
    if point is None:
        return ""
    if point["status"] != "ok":
        return point["status"]
    value = point.get(key)
    return fmt_seconds(value) if key == "wall_s" else fmt_bytes(value)


def curve_table(result: dict, markdown: bool) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): per backend and node count, wall time and peak memory at each prompt length, then the
    time and memory exponents."""
    lengths = lengths_of(result)
    headers = ["backend", "nodes"]
    headers += [f"wall @{t}" for t in lengths] + [f"peak @{t}" for t in lengths]
    headers += ["time exponent", "memory exponent"]
    table = []
    for record in growth_records(result):
        by_length = {p["n_tokens"]: p for p in record["points"]}
        name = md_code(record["backend"]) if markdown else record["backend"]
        line = [name, str(record["nodes"])]
        line += [_point_text(by_length.get(t), "wall_s") for t in lengths]
        line += [_point_text(by_length.get(t), "peak_bytes") for t in lengths]
        line += [fmt_exponent(record["time_exponent"]), fmt_exponent(record["memory_exponent"])]
        table.append(line)
    return headers, table


def curve_section(results: list[dict], tablefmt: str, markdown: bool) -> list[str]:
    """The lines of the prompt-length section for every run that sweeps prompt lengths ([] for none)."""
    out: list[str] = []
    labels = run_labels(results)
    for label, result in zip(labels, results, strict=False):
        if len(lengths_of(result)) < 2:
            continue
        kind = "GPU" if is_cuda(result) else "host"
        headers, table = curve_table(result, markdown)
        title = f"Cost against prompt length ({label})" if len(results) > 1 else "Cost against prompt length"
        out += [f"## {title}", ""] if markdown else [title.lower()]
        out.append(tabulate(table, headers=headers, tablefmt=tablefmt, disable_numparse=True))
        out += [
            "",
            f"Wall time (median over ok repeats) and peak {kind} memory at each prompt length; an exponent is the "
            f"least-squares slope of log(wall time) or log(peak memory) against log(prompt length) over the lengths "
            "where the backend completed (1 = linear, 2 = quadratic); a status marks a length where it did not.",
            "",
        ]
    return out
