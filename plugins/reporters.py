"""The built-in reporters: ``table``, ``markdown``, ``csv``, ``json`` (``png``: :mod:`attrbench.plugins.plot`)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from tabulate import tabulate

from attrbench.api import Reporter
from attrbench.bench.growth import cell_length, growth_records, prompt_length
from attrbench.bench.summary import (
    REFERENCE,
    aggregate_cells,
    backend_order,
    best_backend,
    device_notes,
    environment_rows,
    is_cuda,
    is_sweep,
    peak_bytes,
    phase_names,
    point_key,
    run_labels,
    speedup_text,
    status_text,
    summarise,
    where_text,
)
from attrbench.formatting import fmt_bytes, fmt_num, fmt_ratio, fmt_seconds, md_code, md_text
from attrbench.graph.verdicts import (
    APPROX_MISS,
    FAILED,
    NO_YARDSTICK,
    NOT_RUN,
    PARITY_FIELDS,
    TRUTH,
    TRUTH_FIELDS,
    TRUTH_JACCARD_SLACK,
    TRUTH_RECALL_SLACK,
    TRUTH_REL_FACTOR,
    YARDSTICK,
    rel_tolerance,
)
from attrbench.hookspecs import hookimpl
from attrbench.plugins.curves import curve_section


def _nodes_groups(rows: list[dict]) -> list[tuple[object, list[dict]]]:
    """Rows grouped by point (prompt length, then node count, ascending); within a group, by backend then
    run. Each group is ``((n_tokens, nodes), rows)``."""
    order: list = []
    for r in rows:
        if (r.get("n_tokens"), r["nodes"]) not in order:
            order.append((r.get("n_tokens"), r["nodes"]))
    order.sort(key=point_key)
    backends: list[str] = []
    for r in rows:
        if r["backend"] not in backends:
            backends.append(r["backend"])
    groups = []
    for point in order:
        group = [r for r in rows if (r.get("n_tokens"), r["nodes"]) == point]
        group.sort(key=lambda r: (backends.index(r["backend"]), r["run_index"]))
        groups.append((point, group))
    return groups


def _nodes_title(point: object, group: list[dict], sweep: bool = False) -> str:
    tokens, nodes = point if isinstance(point, tuple) else (None, point)
    active = next((r.get("n_active") for r in group if r.get("n_active")), None)
    text = f"{nodes} feature nodes" if nodes is not None else "all feature nodes"
    if sweep:
        text = f"{tokens} tokens, {text}"
    return f"{text} ({active} active)" if active else text


def _peak_gpu(row: dict) -> str:
    gpu = row.get("peak_gpu_bytes")
    return fmt_bytes(gpu if gpu is not None else row.get("peak_gpu_torch_bytes"))


def _legend(labels: list[str]) -> str:
    return "\n".join(f"run {i + 1}: {label}" for i, label in enumerate(labels))


def _comparison_rows(rows: list[dict], n_runs: int) -> tuple[list[str], list[list[str]]]:
    """Side-by-side comparison of several runs: one line per (backend, nodes), wall and speedup per run."""
    headers = ["backend", "nodes"]
    for i in range(n_runs):
        headers += [f"wall (run {i + 1})", f"speedup (run {i + 1})"]
    sweep = is_sweep(rows)
    if sweep:
        headers.insert(1, "tokens")
    keys: list[tuple] = []
    for point, group in _nodes_groups(rows):
        for row in group:
            if (row["backend"], point) not in keys:
                keys.append((row["backend"], point))
    table = []
    for backend, point in keys:
        line = [backend, *([str(point[0])] if sweep else []), str(point[1])]
        for i in range(n_runs):
            r: dict | None = next(
                (
                    x
                    for x in rows
                    if x["run_index"] == i and x["backend"] == backend and (x.get("n_tokens"), x["nodes"]) == point
                ),
                None,
            )
            if r is None:
                line += ["", ""]
            elif r["status"] != "ok":
                line += [r["status"], "-"]
            else:
                line += [fmt_seconds(r["wall_s"]), speedup_text(r)]
        table.append(line)
    return headers, table


class TableReporter(Reporter):
    """Plain-text tables, one per node count."""

    format = "table"
    description = "plain-text tables, one per node count"
    tablefmt = "simple"

    def render(self, results: list[dict]) -> str:
        rows = summarise(results)
        labels = run_labels(results)
        multi = len(results) > 1
        out: list[str] = []
        if multi:
            out += [_legend(labels), ""]
        else:
            out += [f"run: {labels[0]}", ""]
        truth = _has_truth(rows)
        headers = [
            "backend",
            "status",
            "wall",
            "speedup",
            "peak host",
            "peak gpu",
            "selected",
            "jaccard",
            "rel err",
            "edge recall",
            "pruned jaccard",
            *(TRUTH_HEADERS if truth else []),
            "parity",
        ]
        if multi:
            headers.insert(1, "run")
        sweep = is_sweep(rows)
        for point, group in _nodes_groups(rows):
            table = []
            for r in group:
                line = [
                    r["backend"],
                    status_text(r),
                    fmt_seconds(r["wall_s"]),
                    speedup_text(r),
                    fmt_bytes(r["peak_host_bytes"]),
                    _peak_gpu(r),
                    "-" if r["n_selected"] is None else str(r["n_selected"]),
                    fmt_num(r["selected_jaccard"]),
                    fmt_num(r["rel_frobenius"]),
                    fmt_num(r["edge_recall"]),
                    fmt_num(r["pruned_node_jaccard"]),
                    *(_truth_cells(r) if truth else []),
                    r["parity_verdict"],
                ]
                if multi:
                    line.insert(1, str(r["run_index"] + 1))
                table.append(line)
            out.append(_nodes_title(point, group, sweep))
            out.append(tabulate(table, headers=headers, tablefmt=self.tablefmt, disable_numparse=True))
            out.append("")
        out += curve_section(results, self.tablefmt, markdown=False)
        if multi:
            headers, table = _comparison_rows(rows, len(results))
            out.append("comparison")
            out.append(tabulate(table, headers=headers, tablefmt=self.tablefmt, disable_numparse=True))
            out.append("")
        out += [f"(!) {note}" for note in device_notes(rows)]
        notes = []
        for result in results:
            note = result.get("yardstick_note")
            if note and note not in notes:
                notes.append(note)
        out += [f"note: {note}" for note in notes]
        return "\n".join(out).rstrip() + "\n"


#: columns of the figures against the fp32 truth (bf16 runs), next to the figures against the yardstick
TRUTH_HEADERS = ["truth jaccard", "truth rel err", "truth recall"]


def _has_truth(rows: list[dict]) -> bool:
    return any(r.get(f"truth_{name}") is not None for r in rows for name in TRUTH_FIELDS)


def _truth_cells(row: dict) -> list[str]:
    return [fmt_num(row.get(f"truth_{name}")) for name in TRUTH_FIELDS]


def _saving(ratio: float) -> str:
    return f"{(1 - ratio) * 100:.0f}% saved" if ratio <= 1 else f"{(ratio - 1) * 100:.0f}% more"


def _verdict_line(backend: str, group: list[dict], dtype: str | None) -> str:
    """One markdown bullet judging a backend's parity over all node counts of one run (the verdicts of
    :func:`attrbench.graph.verdicts.judge`, worst first)."""
    verdicts = [r["parity_verdict"] for r in group]
    if TRUTH in verdicts:
        return f"- {md_code(backend)}: the float32 truth (every bf16 graph was compared with it)"
    yardstick_at = [r for r in group if r["parity_verdict"] == YARDSTICK]
    if yardstick_at and len(yardstick_at) < len(group) and any(r["parity_against"] for r in group):
        # the yardstick only where the reference did not complete (several prompt lengths or node counts)
        others = [r for r in group if r["parity_verdict"] != YARDSTICK]
        points = ", ".join(_point_text(r, is_sweep(group)) for r in yardstick_at)
        return _verdict_line(backend, others, dtype) + f"; the yardstick at {points}"
    if YARDSTICK in verdicts:
        truth = [r for r in group if r.get("truth_selected_jaccard") is not None]
        if truth:
            return (
                f"- {md_code(backend)}: the yardstick; against the fp32 truth: selected Jaccard "
                f"{fmt_num(min(r['truth_selected_jaccard'] for r in truth))}, rel. error "
                f"{fmt_num(max(r['truth_rel_frobenius'] or 0 for r in truth))}, edge recall "
                f"{fmt_num(min(r['truth_edge_recall'] or 0 for r in truth))} "
                "(the bf16 distance the others may reach)"
            )
        return f"- {md_code(backend)}: the yardstick (the others were compared with it)"
    judged = [r for r in group if r["parity_verdict"] not in (NOT_RUN, NO_YARDSTICK)]
    if not judged:
        if NO_YARDSTICK in verdicts:
            return (
                f"- {md_code(backend)}: **no yardstick** (no graph to compare with: add a yardstick backend to the run)"
            )
        return f"- {md_code(backend)}: no verdict ({', '.join(sorted({r['status'] for r in group}))})"
    worst = next((v for v in (FAILED, APPROX_MISS) if v in verdicts), judged[0]["parity_verdict"])
    against = next((r["parity_against"] for r in judged if r["parity_against"]), REFERENCE)
    by_truth = [r for r in judged if "fp32 truth" in (r.get("verdict_note") or "")]
    if by_truth:  # bf16: the distance from the fp32 truth, next to circuit-tracer's own bf16 graph's
        parts = []
        for r in by_truth:
            ct = r.get("reference_truth") or {}
            parts.append(
                f"{where_text(r, is_sweep(group))}: selected Jaccard {fmt_num(r['truth_selected_jaccard'])} "
                f"(circuit-tracer bf16 {fmt_num(ct.get('selected_jaccard'))}), rel. error "
                f"{fmt_num(r['truth_rel_frobenius'])} ({fmt_num(ct.get('rel_frobenius'))}), edge recall "
                f"{fmt_num(r['truth_edge_recall'])} ({fmt_num(ct.get('edge_recall'))})"
            )
        return (
            f"- {md_code(backend)}: **{worst}** vs fp32 truth ({'; '.join(parts)}; slack: Jaccard -"
            f"{TRUTH_JACCARD_SLACK:g}, rel. error x{TRUTH_REL_FACTOR:g}, edge recall -{TRUTH_RECALL_SLACK:g})"
        )
    if group[0]["exact"]:
        js = [r["selected_jaccard"] for r in judged if r["selected_jaccard"] is not None]
        rels = [r["rel_frobenius"] for r in judged if r["rel_frobenius"] is not None]
        detail = (
            f"exact; worst selected Jaccard {fmt_num(min(js) if js else None)}, worst rel. error "
            f"{fmt_num(max(rels) if rels else None)} (limit {rel_tolerance(dtype):g} for {dtype})"
        )
    else:
        recs = [r["edge_recall"] for r in judged if r["edge_recall"] is not None]
        pjs = [r["pruned_node_jaccard"] for r in judged if r["pruned_node_jaccard"] is not None]
        detail = (
            f"approximate; worst edge recall {fmt_num(min(recs) if recs else None)} (>= 0.99), "
            f"worst pruned-node Jaccard {fmt_num(min(pjs) if pjs else None)} (>= 0.95)"
        )
    yardsticks = list(dict.fromkeys(r["parity_against"] for r in judged if r["parity_against"]))
    if len(yardsticks) > 1:  # the reference did not complete everywhere: name the points of each yardstick
        sweep = is_sweep(group)
        against_text = " and ".join(
            f"{md_code(y)} ({', '.join(_point_text(r, sweep) for r in judged if r['parity_against'] == y)})"
            for y in yardsticks
        )
    else:
        against_text = md_code(against)
    return f"- {md_code(backend)}: **{worst}** vs {against_text} ({detail})"


def _point_text(row: dict, sweep: bool) -> str:
    """``T tokens`` in a run over several prompt lengths with one node count, else :func:`where_text`."""
    return f"{row['n_tokens']} tokens" if sweep else where_text(row, sweep)


def _relative_to_yardstick(rows: list[dict], cuda: bool) -> list[str]:
    """Where the reference did not complete: each backend's speed and memory relative to the yardstick that
    stood in for it (``autodiff-free``), one line per node count."""
    out = []
    sweep = is_sweep(rows)
    for point in dict.fromkeys((r.get("n_tokens"), r["nodes"]) for r in rows):
        at = [r for r in rows if (r.get("n_tokens"), r["nodes"]) == point and r["status"] == "ok"]
        yard = next((r for r in at if r["parity_verdict"] == "yardstick"), None)
        others = [r for r in at if r is not yard]
        if yard is None or not yard["wall_s"] or not others:
            continue
        yard_peak = peak_bytes(yard, cuda)
        parts = []
        for r in others:
            mem = peak_bytes(r, cuda)
            mem_text = f", {fmt_ratio(mem / yard_peak)} memory" if mem and yard_peak else ""
            parts.append(f"{md_code(r['backend'])} {fmt_ratio(yard['wall_s'] / r['wall_s'])} faster{mem_text}")
        out.append(
            f"- Relative to {md_code(yard['backend'])} (the yardstick) at {where_text(yard, sweep)}: "
            + ", ".join(parts)
        )
    return out


class MarkdownReporter(Reporter):
    """A summary, per-node-count tables with phase times, then the environment."""

    format = "markdown"
    description = "markdown: summary, verdicts, per-node-count tables, environment"

    def _summary(self, result: dict, rows: list[dict]) -> list[str]:
        dtype = (result.get("settings") or {}).get("dtype")
        sweep = is_sweep(rows)
        out: list[str] = []
        for title, exact in (("Best backend", True), ("Fastest approximate backend", False)):
            best = best_backend(rows, exact=exact)
            if best is None:
                if exact:
                    out.append(f"- {title}: none (no exact backend completed)")
            elif best["speedup"] is not None:
                mem = (
                    f", peak memory {fmt_ratio(best['mem_ratio'])} of the reference's"
                    if best["mem_ratio"] is not None
                    else ""
                )
                out.append(
                    f"- {title}: **{md_text(best['backend'])}**, {fmt_ratio(best['speedup'])} faster than the "
                    f"reference at {where_text(best, sweep)}{mem}; parity {best['parity_verdict']}"
                )
            else:
                out.append(
                    f"- {title}: **{md_text(best['backend'])}** ({fmt_seconds(best['wall_s'])} at "
                    f"{where_text(best, sweep)}; the reference did not complete there, no speedup)"
                )
        ref_ok = [r for r in rows if r["backend"] == REFERENCE and r["status"] == "ok"]
        if ref_ok:
            point = max(((r.get("n_tokens"), r["nodes"]) for r in ref_ok), key=point_key)
            at = [r for r in rows if (r.get("n_tokens"), r["nodes"]) == point and r["backend"] != REFERENCE]
            where = where_text(next(r for r in ref_ok if (r.get("n_tokens"), r["nodes"]) == point), sweep)
            speed = ", ".join(
                f"{md_code(r['backend'])} {fmt_ratio(r['speedup']) if r['status'] == 'ok' else r['status']}" for r in at
            )
            if speed:
                out.append(f"- Speedup vs reference at {where}: {speed}")
            mem = ", ".join(
                f"{md_code(r['backend'])} {fmt_ratio(r['mem_ratio'])} ({_saving(r['mem_ratio'])})"
                if r["mem_ratio"] is not None
                else f"{md_code(r['backend'])} -"
                for r in at
                if r["status"] == "ok"
            )
            if mem:
                kind = "GPU" if is_cuda(result) else "host"
                out.append(f"- Peak {kind} memory vs reference at {where}: {mem}")
        else:
            out.append("- The reference did not complete at any node count: no speedups.")
            out += _relative_to_yardstick(rows, is_cuda(result))
        failed = [r for r in rows if r["status"] != "ok"]
        for r in failed:
            out.append(f"- {md_code(r['backend'])} at {where_text(r, sweep)}: {status_text(r, None)}")
        out.append("")
        out.append("Parity:")
        out.append("")
        for backend in backend_order([result]):
            if backend == REFERENCE:
                continue
            group = [r for r in rows if r["backend"] == backend]
            if group:
                out.append(_verdict_line(backend, group, dtype))
        note = result.get("yardstick_note")
        if note:
            out += ["", f"> Yardstick: {note}"]
        return out

    def _node_tables(self, rows: list[dict], multi: bool) -> list[str]:
        out: list[str] = []
        phases = phase_names(rows)
        has_flops = any(r.get("flop_fraction") is not None for r in rows)
        truth = _has_truth(rows)
        headers = [
            "backend",
            "status",
            "wall",
            "speedup",
            "peak host",
            "peak gpu",
            "mem ratio",
            "selected",
            "jaccard",
            "rel err",
            "max abs",
            "edge recall",
            "pruned jaccard",
            *(TRUTH_HEADERS if truth else []),
            "parity",
        ]
        if multi:
            headers.insert(1, "run")
        headers += [f"{p}" for p in phases]
        if has_flops:
            headers.append("FLOP fraction")
        sweep = is_sweep(rows)
        for point, group in _nodes_groups(rows):
            table = []
            for r in group:
                line = [
                    f"{md_code(r['backend'])}",
                    status_text(r, None).replace("|", "\\|"),
                    fmt_seconds(r["wall_s"]),
                    speedup_text(r),
                    fmt_bytes(r["peak_host_bytes"]),
                    _peak_gpu(r),
                    fmt_ratio(r["mem_ratio"]),
                    "-" if r["n_selected"] is None else str(r["n_selected"]),
                    fmt_num(r["selected_jaccard"]),
                    fmt_num(r["rel_frobenius"]),
                    fmt_num(r["max_abs"]),
                    fmt_num(r["edge_recall"]),
                    fmt_num(r["pruned_node_jaccard"]),
                    *(_truth_cells(r) if truth else []),
                    r["parity_verdict"],
                ]
                if multi:
                    line.insert(1, str(r["run_index"] + 1))
                line += [fmt_seconds((r.get("phases_s") or {}).get(p)) for p in phases]
                if has_flops:
                    ff = r.get("flop_fraction")
                    line.append("-" if ff is None else f"{ff:.3f}")
                table.append(line)
            out += [
                f"### {_nodes_title(point, group, sweep)}",
                "",
                tabulate(table, headers=headers, tablefmt="github", disable_numparse=True),
                "",
            ]
        if phases:
            out += ["Phase columns are median seconds over the ok repeats.", ""]
        out += [f"(!) {note}" for note in device_notes(rows)]
        return out

    def render(self, results: list[dict]) -> str:
        rows = summarise(results)
        labels = run_labels(results)
        multi = len(results) > 1
        out = ["# attrbench results", ""]
        out += ["## Summary", ""]
        for i, (label, result) in enumerate(zip(labels, results, strict=False)):
            run_rows = [r for r in rows if r["run_index"] == i]
            if multi:
                out += [f"### Run {i + 1}: {label}", ""]
            else:
                out += [f"Run: {label}", ""]
            out += self._summary(result, run_rows)
            out.append("")
        if multi:
            headers, table = _comparison_rows(rows, len(results))
            out += ["## Comparison", "", tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
        out += curve_section(results, "github", markdown=True)
        out += ["## Results by node count" if not is_sweep(rows) else "## Results by prompt length and node count", ""]
        out += self._node_tables(rows, multi)
        out += ["## Environment", ""]
        for i, (label, result) in enumerate(zip(labels, results, strict=False)):
            if multi:
                out += [f"### Run {i + 1}: {label}", ""]
            out += [
                tabulate(environment_rows(result), headers=["", "value"], tablefmt="github", disable_numparse=True),
                "",
            ]
        return "\n".join(out).rstrip() + "\n"


#: per-run and per-cell columns of the CSV report, before the parity, verdict and phase columns
_CSV_RUN_KEYS = ("run", "workload", "workload_hash", "device", "dtype")
_CSV_CELL_KEYS = ("backend", "exact", "n_tokens", "nodes", "repeat", "status", "error", "wall_s")
_CSV_MEASURED_KEYS = ("peak_host_bytes", "peak_gpu_bytes", "peak_gpu_torch_bytes", "n_selected", "n_active", "n_logits")


def _csv_row(label: str, result: dict, cell: dict, ref: dict | None, phases: list[str]) -> dict[str, Any]:
    """One cell as a CSV row (the speedup against the reference's aggregated cell at the same node count)."""
    settings, workload = result.get("settings") or {}, result.get("workload") or {}
    speedup = None
    if cell.get("status") == "ok" and ref and ref["status"] == "ok" and ref["wall_s"] and cell.get("wall_s"):
        speedup = ref["wall_s"] / cell["wall_s"]
    parity, truth = cell.get("parity") or {}, cell.get("truth_parity") or {}
    row: dict[str, Any] = dict(
        zip(
            _CSV_RUN_KEYS,
            (label, workload.get("name"), workload.get("hash"), settings.get("device"), settings.get("dtype")),
            strict=True,
        )
    )
    row.update({key: cell.get(key) for key in _CSV_CELL_KEYS})
    row["n_tokens"] = cell_length(cell, prompt_length(workload.get("config")))
    row["speedup_vs_reference"] = speedup
    row.update({key: cell.get(key) for key in _CSV_MEASURED_KEYS})
    row["parity_against"] = parity.get("against")
    row.update({key: parity.get(key) for key in PARITY_FIELDS})
    row.update({f"truth_{key}": truth.get(key) for key in TRUTH_FIELDS})
    row["flop_fraction"] = (cell.get("info") or {}).get("flop_fraction")
    row.update({f"phase_{p}_s": (cell.get("phases_s") or {}).get(p) for p in phases})
    return row


class CsvReporter(Reporter):
    """One row per cell (every repeat), with the speed ratio to the reference's median wall time."""

    format = "csv"
    description = "CSV, one row per cell"

    def render(self, results: list[dict]) -> str:
        labels = run_labels(results)
        phases = list(dict.fromkeys(p for r in results for c in r.get("cells", []) for p in c.get("phases_s") or {}))
        fields = [
            *_CSV_RUN_KEYS,
            *_CSV_CELL_KEYS,
            "speedup_vs_reference",
            *_CSV_MEASURED_KEYS,
            "parity_against",
            *PARITY_FIELDS,
            *[f"truth_{f}" for f in TRUTH_FIELDS],
            "verdict",
            "flop_fraction",
            *[f"phase_{p}_s" for p in phases],
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for label, result in zip(labels, results, strict=True):
            agg = aggregate_cells(result)
            default = prompt_length((result.get("workload") or {}).get("config"))
            verdicts = {(r["backend"], r["n_tokens"], r["nodes"]): r["parity_verdict"] for r in summarise([result])}
            for cell in result.get("cells", []):
                point = (cell_length(cell, default), cell.get("nodes"))
                row = _csv_row(label, result, cell, agg.get((REFERENCE, *point)), phases)
                row["verdict"] = cell.get("verdict") or verdicts.get((cell.get("backend"), *point))
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return buf.getvalue()


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _with_growth(result: dict) -> dict:
    """The run with its ``growth`` list (:mod:`attrbench.bench.growth`) recomputed from its cells, where it
    spans several prompt lengths."""
    curves = growth_records(result)
    return dict(result, growth=curves) if curves else result


class JsonReporter(Reporter):
    """The results, pretty-printed: one run as it is; several as ``{"schema_version": 1, "runs": [...]}``
    with each run's ``label`` added."""

    format = "json"
    description = "the (merged) results as pretty-printed JSON"

    def render(self, results: list[dict]) -> str:
        if len(results) == 1:
            data: object = _with_growth(_public(results[0]))
        else:
            labels = run_labels(results)
            runs = [dict(_with_growth(_public(r)), label=label) for label, r in zip(labels, results, strict=True)]
            data = {"schema_version": 1, "runs": runs}
        return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


@hookimpl
def register_reporters(register):
    """Register table, markdown, csv, json and png."""
    from attrbench.plugins.plot import PngReporter, SweepPngReporter

    register(TableReporter())
    register(MarkdownReporter())
    register(CsvReporter())
    register(JsonReporter())
    register(PngReporter())
    register(SweepPngReporter())
