"""Reporters and the helpers they share.

A reporter turns a list of results dicts (schema_version 1, as written by ``attrbench run``) into text or
bytes. Reporters are plugins (hook ``register_reporters``); :func:`render` looks one up by format name.

The shared helpers aggregate repeats (median wall time and phase times, maximum peak memory, worst parity
figure over the ok repeats), compute each backend's speed and memory ratio to the reference measured in
the same results file at the same prompt length and node count, judge parity, label runs and format numbers.
A run over several prompt lengths is summarised per (prompt length, node count) *point*; its growth
exponents come from :mod:`attrbench.bench.growth`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attrbench.bench.growth import cell_length, peak_bytes, prompt_length
from attrbench.errors import UsageError
from attrbench.formatting import fmt_ratio, short_error
from attrbench.graph.verdicts import (
    APPROX,
    HIGHER_IS_BETTER,
    NO_YARDSTICK,
    OK,
    PARITY_FIELDS,
    TRUTH,
    TRUTH_FIELDS,
    YARDSTICK,
    judge,
)
from attrbench.plugin_manager import get_reporters

REFERENCE = "reference"


def render(results: list[dict], fmt: str, sources: list[str] | None = None) -> str | bytes:
    """Render ``results`` with the reporter registered for ``fmt``.

    ``sources`` (optional, one path per results dict) lets run labels fall back to the file stem when
    two runs would otherwise get the same label.
    """
    reporters = get_reporters()
    reporter = reporters.get(fmt)
    if reporter is None:
        known = ", ".join(sorted(reporters)) or "none registered"
        raise UsageError(f"unknown report format {fmt!r}; known formats: {known}")
    if not results:
        raise UsageError("no results to report")
    if sources is not None:
        results = [dict(r, _source=str(s)) for r, s in zip(results, sources, strict=False)]
    return reporter.render(list(results))


# ---------------------------------------------------------------------------------------------------------
# loading


def _base_label(result: dict) -> str:
    workload = (result.get("workload") or {}).get("name") or "workload"
    settings = result.get("settings") or {}
    rev = (result.get("environment") or {}).get("git_revision") or ""
    parts = [str(workload), str(settings.get("device") or "?"), str(settings.get("dtype") or "?")]
    if rev:
        parts.append(f"@{str(rev)[:7]}")
    return " ".join(parts)


def run_labels(results: list[dict]) -> list[str]:
    """One distinct label per run: workload name, device, dtype and short git revision, then the file stem
    (or creation time, or position) where that is not enough to tell runs apart."""
    labels = [_base_label(r) for r in results]
    for _ in range(3):
        dupes = {lab for lab in labels if labels.count(lab) > 1}
        if not dupes:
            break
        for i, r in enumerate(results):
            if labels[i] not in dupes:
                continue
            if r.get("_source") and Path(r["_source"]).stem not in labels[i]:
                labels[i] = f"{labels[i]} ({Path(r['_source']).stem})"
            elif r.get("created") and str(r["created"]) not in labels[i]:
                labels[i] = f"{labels[i]} ({r['created']})"
            else:
                labels[i] = f"{labels[i]} #{i + 1}"
    return labels


# ---------------------------------------------------------------------------------------------------------
# aggregation


def _nodes_key(nodes: Any) -> tuple:
    return (0, nodes) if isinstance(nodes, (int, float)) else (1, str(nodes))


def point_key(point: tuple[int | None, Any]) -> tuple:
    """Sort key of an (n_tokens, nodes) point: prompt length, then node count."""
    tokens, nodes = point
    return (tokens or 0, _nodes_key(nodes))


def node_counts(result: dict) -> list:
    """The node counts of a run, ascending."""
    return sorted({c.get("nodes") for c in result.get("cells", [])}, key=_nodes_key)


def points_of(result: dict) -> list[tuple[int | None, Any]]:
    """The (n_tokens, nodes) points of a run, by prompt length then node count."""
    default = prompt_length((result.get("workload") or {}).get("config"))
    found = {(cell_length(c, default), c.get("nodes")) for c in result.get("cells", [])}
    return sorted(found, key=point_key)


def is_sweep(rows: list[dict]) -> bool:
    """Whether summarised rows span several prompt lengths (reports then name the length of every point)."""
    return len({r.get("n_tokens") for r in rows}) > 1


def where_text(row: dict, sweep: bool) -> str:
    """``N nodes``, or ``T tokens, N nodes`` in a report over several prompt lengths."""
    return f"{row['n_tokens']} tokens, {row['nodes']} nodes" if sweep else f"{row['nodes']} nodes"


def backend_order(results: Iterable[dict]) -> list[str]:
    """Backends in first-appearance order, the reference first."""
    order: list[str] = []
    for r in results:
        for c in r.get("cells", []):
            if c.get("backend") not in order:
                order.append(c.get("backend"))
    if REFERENCE in order:
        order.remove(REFERENCE)
        order.insert(0, REFERENCE)
    return order


def _median(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.median(values) if values else None


def _max(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _worst_parity(given: list[dict | None]) -> dict | None:
    parities = [p for p in given if isinstance(p, dict)]
    if not parities:
        return None
    out: dict[str, Any] = {"against": parities[0].get("against")}
    for name in PARITY_FIELDS:
        values = [float(v) for p in parities if (v := p.get(name)) is not None]
        if not values:
            out[name] = None
        else:
            out[name] = min(values) if name in HIGHER_IS_BETTER else max(values)
    return out


def flop_fraction_of(cell: dict, floor: float | None) -> float | None:
    """The graph's FLOP floor over what the cell's wall time at the machine's GEMM rate could do: the rate
    in the dtype its backward passes ran in (``info.vjp_dtype``: bfloat16 for approximate-pruned) where it
    was measured, else the run's default rate."""
    info = cell.get("info") or {}
    measurement = info.get("measurement") or {}
    rate = (measurement.get("gemm_gflops_by_dtype") or {}).get(info.get("vjp_dtype")) or measurement.get("gemm_gflops")
    wall = cell.get("wall_s")
    if not (floor and rate and wall) or cell.get("status") != "ok":
        return None
    return floor / (wall * rate * 1e9)


def aggregate_cells(result: dict) -> dict[tuple[str, int | None, Any], dict]:
    """Aggregate repeats into one cell per (backend, n_tokens, nodes).

    Over the ok repeats: median wall and phase times, maximum peak memory, worst parity figures. A cell
    with no ok repeat takes the status and error of its last repeat. ``n_tokens`` of cells written before
    prompt-length sweeps is the workload's own length.
    """
    default = prompt_length((result.get("workload") or {}).get("config"))
    groups: dict[tuple[str, int | None, Any], list[dict]] = {}
    floors: dict[Any, float] = {}  # every exact graph at a point has the same FLOP floor
    for cell in result.get("cells", []):
        point = (cell_length(cell, default), cell.get("nodes"))
        groups.setdefault((cell.get("backend"), *point), []).append(cell)
        floor = (cell.get("info") or {}).get("flop_floor")
        if floor and cell.get("exact", True):
            floors.setdefault(point, floor)
    out: dict[tuple[str, int | None, Any], dict] = {}
    for key, cells in groups.items():
        cells = sorted(cells, key=lambda c: c.get("repeat") or 0)
        ok = [c for c in cells if c.get("status") == "ok"]
        use = ok or cells
        phases: dict[str, list] = {}
        for c in use:
            for name, secs in (c.get("phases_s") or {}).items():
                phases.setdefault(name, []).append(secs)
        info = dict(use[0].get("info") or {})
        flop_fractions = [
            (c.get("info") or {}).get("flop_fraction") or flop_fraction_of(c, floors.get(key[1:])) for c in use
        ]
        flop_fraction = _median(flop_fractions)
        if flop_fraction is not None:
            info["flop_fraction"] = flop_fraction
        failed = [c for c in cells if c.get("status") != "ok"]
        out[key] = {
            "backend": key[0],
            "n_tokens": key[1],
            "nodes": key[2],
            "exact": bool(cells[0].get("exact", key[0] == REFERENCE)),
            "status": "ok" if ok else (cells[-1].get("status") or "error"),
            "error": None if ok else cells[-1].get("error"),
            "repeats": len(cells),
            "n_ok": len(ok),
            "failed_statuses": [c.get("status") for c in failed],
            "wall_s": _median([c.get("wall_s") for c in ok]) if ok else None,
            "wall_s_all": [c.get("wall_s") for c in ok],
            "phases_s": {name: _median(v) for name, v in phases.items()},
            "peak_host_bytes": _max([c.get("peak_host_bytes") for c in use]),
            "peak_gpu_bytes": _max([c.get("peak_gpu_bytes") for c in use]),
            "peak_gpu_torch_bytes": _max([c.get("peak_gpu_torch_bytes") for c in use]),
            "n_selected": use[0].get("n_selected"),
            "n_active": use[0].get("n_active"),
            "n_logits": use[0].get("n_logits"),
            "info": info,
            "parity": _worst_parity([c.get("parity") for c in ok]),
            "truth_parity": _worst_parity([c.get("truth_parity") for c in ok]),
            "stored_verdicts": [c.get("verdict") for c in cells if c.get("verdict")],
            "error_traceback": None if ok else cells[-1].get("error_traceback"),
        }
    return out


def is_cuda(result: dict) -> bool:
    return str((result.get("settings") or {}).get("device") or "cpu").startswith("cuda")


def summarise(results: list[dict]) -> list[dict]:
    """One row per (run, n_tokens, nodes, backend), runs in the given order, points ascending (prompt length,
    then nodes), reference first.

    Each row holds the aggregated cell (see :func:`aggregate_cells`) plus ``run`` (label), ``run_index``,
    ``device``, ``dtype``, ``speedup`` (reference wall / backend wall in the same run at the same point;
    None unless both are ok), ``mem_ratio`` (backend peak / reference peak, GPU on cuda, else host),
    ``parity_verdict`` and ``verdict_note`` (:func:`attrbench.graph.verdicts.judge`, on the aggregated figures),
    the parity figures at top level and the figures against the fp32 truth as ``truth_<figure>`` (bf16 runs).
    """
    labels = run_labels(results)
    rows: list[dict] = []
    for index, (label, result) in enumerate(zip(labels, results, strict=False)):
        settings = result.get("settings") or {}
        dtype = settings.get("dtype")
        cuda = is_cuda(result)
        cells = aggregate_cells(result)
        order = backend_order([result])
        for point in points_of(result):
            at = [c for (_, *p), c in cells.items() if tuple(p) == point]
            yardsticks = {(c["parity"] or {}).get("against") for c in at}
            truths = {(c["truth_parity"] or {}).get("against") for c in at}
            ref = cells.get((REFERENCE, *point))
            ref_ok = ref is not None and ref["status"] == "ok"
            for backend in order:
                cell = cells.get((backend, *point))
                if cell is None:
                    continue
                row = dict(cell)
                row.update(run=label, run_index=index, device=settings.get("device"), dtype=dtype)
                ok = cell["status"] == "ok"
                row["speedup"] = None
                row["mem_ratio"] = None
                row["device_note"] = None
                if ok and ref is not None and ref_ok:
                    if ref["wall_s"] and cell["wall_s"]:
                        row["speedup"] = ref["wall_s"] / cell["wall_s"]
                        row["device_note"] = device_mismatch(ref, cell)
                    ref_peak, peak = peak_bytes(ref, cuda), peak_bytes(cell, cuda)
                    if ref_peak and peak is not None:
                        row["mem_ratio"] = peak / ref_peak
                for name in PARITY_FIELDS:
                    row[name] = (cell["parity"] or {}).get(name)
                row["parity_against"] = (cell["parity"] or {}).get("against")
                row["flop_fraction"] = (cell.get("info") or {}).get("flop_fraction")
                for name in TRUTH_FIELDS:
                    row[f"truth_{name}"] = (cell["truth_parity"] or {}).get(name)
                role = None
                if backend in truths or TRUTH in cell["stored_verdicts"]:
                    role = TRUTH
                elif backend in yardsticks or backend == REFERENCE or YARDSTICK in cell["stored_verdicts"]:
                    role = YARDSTICK
                against = row["parity_against"] or REFERENCE
                reference_truth = (cells.get((against, *point)) or {}).get("truth_parity")
                row["reference_truth"] = reference_truth
                row["parity_verdict"], row["verdict_note"] = judge(
                    row, dtype, role=role, reference_truth=reference_truth
                )
                rows.append(row)
    return rows


def _devices(cell: dict) -> set[str]:
    placement = (cell.get("info") or {}).get("placement") or {}
    return {str(placement["device"])} if placement.get("device") else set()


def device_mismatch(ref: dict, cell: dict) -> str | None:
    """Why a speedup compares unlike hardware: the two cells ran on different device models (a cluster run)."""
    ref_devices, devices = _devices(ref), _devices(cell)
    if ref_devices and devices and ref_devices != devices:
        return f"different devices: {', '.join(sorted(devices))} vs the reference's {', '.join(sorted(ref_devices))}"
    return None


def speedup_text(row: dict) -> str:
    """The speedup, flagged with ``!`` where the two cells ran on different device models."""
    text = fmt_ratio(row.get("speedup"))
    return f"{text} (!)" if row.get("device_note") and row.get("speedup") is not None else text


def device_notes(rows: list[dict]) -> list[str]:
    """One line per backend and point whose speedup compares cells on different device models."""
    sweep = is_sweep(rows)
    return [
        f"{r['backend']} {'n_tokens=' + str(r['n_tokens']) + ' ' if sweep else ''}nodes={r['nodes']}: "
        f"{r['device_note']}"
        for r in rows
        if r.get("device_note")
    ]


def phase_names(rows: list[dict]) -> list[str]:
    """Phase names in first-appearance order."""
    names: list[str] = []
    for row in rows:
        for name in row.get("phases_s") or {}:
            if name not in names:
                names.append(name)
    return names


def status_text(row: dict, width: int | None = 50) -> str:
    """``ok``, or the failure status with its message (``oom: CUDA out of memory ...``), shortened at a word
    boundary to ``width`` characters (None: the whole first line)."""
    if row["status"] == "ok":
        if row.get("n_ok", 1) < row.get("repeats", 1):
            return f"ok ({row['n_ok']}/{row['repeats']})"
        return "ok"
    msg = short_error(row.get("error"), width)
    return f"{row['status']}: {msg}" if msg else row["status"]


def best_backend(rows: list[dict], exact: bool | None = True) -> dict | None:
    """The fastest non-reference backend with good parity at the largest point (prompt length, then node
    count) where the reference completed (or, where it never did, the fastest ok backend at the largest point).

    ``exact=True`` (the default) considers exact backends only, ``False`` approximate ones, ``None`` all.
    """
    rows = [r for r in rows if exact is None or r["backend"] == REFERENCE or bool(r["exact"]) == exact]
    ref_ok = [_point(r) for r in rows if r["backend"] == REFERENCE and r["status"] == "ok"]
    if ref_ok:
        point = max(ref_ok, key=point_key)
        candidates = [r for r in rows if _point(r) == point and r["backend"] != REFERENCE and r["speedup"]]
        good = [r for r in candidates if r["parity_verdict"] in (OK, APPROX, NO_YARDSTICK)]
        pool = good or candidates
        return max(pool, key=lambda r: r["speedup"]) if pool else None
    ok = [r for r in rows if r["status"] == "ok" and r["wall_s"] and (r["backend"] != REFERENCE or exact is not False)]
    if not ok:
        return None
    point = max((_point(r) for r in ok), key=point_key)
    return min((r for r in ok if _point(r) == point), key=lambda r: r["wall_s"])


def _point(row: dict) -> tuple[int | None, Any]:
    return (row.get("n_tokens"), row["nodes"])


def environment_rows(result: dict) -> list[tuple[str, str]]:
    """(key, value) pairs describing where a run happened."""
    env = result.get("environment") or {}
    settings = result.get("settings") or {}
    workload = result.get("workload") or {}
    pairs = [
        (
            "workload",
            f"{workload.get('name')} (hash {workload.get('hash')}, {workload.get('n_active')} active features)",
        ),
        ("device / dtype", f"{settings.get('device')} / {settings.get('dtype')}"),
        ("batch size", settings.get("batch_size")),
        ("repeats", settings.get("repeats")),
        ("created", result.get("created")),
        ("attrbench", result.get("attrbench_version")),
    ]
    for key in (
        "python",
        "torch",
        "circuit_tracer",
        "transformers",
        "platform",
        "cpu",
        "cpu_count",
        "gpu",
        "cuda",
        "git_revision",
    ):
        pairs.append((key, env.get(key)))
    return [(k, "-" if v is None else str(v)) for k, v in pairs]
