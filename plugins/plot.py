"""The ``png`` reporter: wall time, peak memory, speedup and parity error against node count, or, for a run
over several prompt lengths, against prompt length (log-log, each backend's fitted growth exponents in the
legend, ``oom`` / ``timeout`` marked at the lengths where a backend did not complete).

Registered by :mod:`attrbench.plugins.reporters`; matplotlib is imported lazily with the Agg backend, so
importing this module never opens a display.
"""

from __future__ import annotations

import io
from typing import Any

from attrbench.api import Reporter
from attrbench.bench.growth import growth_records, lengths_of
from attrbench.bench.summary import REFERENCE, backend_order, is_cuda, peak_bytes, run_labels, summarise
from attrbench.plugins.curves import fmt_exponent

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def _numeric(nodes) -> bool:
    return isinstance(nodes, (int, float)) and not isinstance(nodes, bool)


def _plot_series(
    axes: dict[str, Any],
    backend: str,
    run_index: int,
    group: list[dict],
    style: dict[str, Any],
    cuda: bool,
    x: str = "nodes",
) -> set[str]:
    """One backend of one run on the four panels, against ``x`` (``nodes`` or ``n_tokens``); returns the
    panels it drew a line on."""
    plotted: set[str] = set()
    ok = [r for r in group if r["status"] == "ok"]
    peaks = [(r[x], peak_bytes(r, cuda)) for r in group]
    lines = {
        "wall": [(r[x], r["wall_s"]) for r in ok if r["wall_s"] and r["wall_s"] > 0],
        "mem": [(n, peak / 2**20) for n, peak in peaks if peak is not None and peak > 0],
    }
    if backend != REFERENCE:
        lines["speed"] = [(r[x], r["speedup"]) for r in ok if r["speedup"]]
        lines["err"] = [
            (r[x], r["rel_frobenius"]) for r in ok if r["rel_frobenius"] is not None and r["rel_frobenius"] > 0
        ]
        zeros = [r[x] for r in ok if r["rel_frobenius"] == 0]
        if zeros:
            axes["err"].annotate(
                f"{backend}: 0 error", (zeros[0], 0.02), xycoords=("data", "axes fraction"), fontsize=7, ha="center"
            )
    for key, pts in lines.items():
        if pts:
            axes[key].plot(*zip(*pts, strict=False), **style)
            plotted.add(key)
    # failed cells: a cross at the top of the wall-time and memory panels, with the status
    for r in group:
        if r["status"] != "ok":
            for key in ("wall", "mem"):
                axes[key].plot(
                    [r[x]], [0.97], marker="x", color=style["color"], transform=axes[key].get_xaxis_transform()
                )
                axes[key].annotate(
                    f"{backend}: {r['status']}" if x == "n_tokens" else r["status"],
                    (r[x], 1),
                    xycoords=("data", "axes fraction"),
                    textcoords="offset points",
                    xytext=(0, -14 - 10 * ((run_index + group_offset(backend)) % 4)),
                    fontsize=7,
                    ha="center",
                    color="red",
                )
    return plotted


def group_offset(backend: str) -> int:
    """A small per-backend offset, so that failure labels of several backends at one x do not overlap."""
    return sum(map(ord, backend)) % 4


def _finish_axes(axes: dict[str, Any], plotted: set[str], mem_kind: str, xlabel: str = "feature nodes") -> None:
    """Titles, log scales, legends; "no data" on an empty panel."""
    axes["wall"].set(title="Wall time", xlabel=xlabel, ylabel="seconds")
    axes["mem"].set(title=f"Peak {mem_kind} memory", xlabel=xlabel, ylabel="MiB")
    axes["speed"].set(title="Speedup vs reference (same run)", xlabel=xlabel, ylabel="x faster")
    axes["err"].set(title="Parity: relative Frobenius error", xlabel=xlabel, ylabel="rel. error")
    for key, ax in axes.items():
        if key in plotted:
            ax.set_xscale("log")
            if key != "speed":
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.grid(True, which="both", alpha=0.3)
    if "speed" in plotted:
        axes["speed"].axhline(1.0, color="grey", linewidth=0.8)


class PngReporter(Reporter):
    """A 2x2 figure: wall time and peak memory vs nodes (log-log), speedup vs reference, parity error."""

    format = "png"
    binary = True
    description = (
        "PNG figure: wall time, peak memory, speedup and parity error vs nodes (vs prompt length for a run "
        "over several prompt lengths, with growth exponents)"
    )

    def render(self, results: list[dict]) -> bytes:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        sweep = any(len(lengths_of(r)) > 1 for r in results)
        x = "n_tokens" if sweep else "nodes"
        rows = [r for r in summarise(results) if _numeric(r["nodes"]) and _numeric(r.get(x))]
        labels = run_labels(results)
        multi = len(results) > 1
        fig = Figure(figsize=(11, 8), dpi=100)
        FigureCanvasAgg(fig)
        grid = fig.subplots(2, 2)
        axes = {"wall": grid[0][0], "mem": grid[0][1], "speed": grid[1][0], "err": grid[1][1]}
        kinds = {"GPU" if is_cuda(r) else "host" for r in results}
        mem_kind = "/".join(sorted(kinds))

        order = [b for b in backend_order(results) if b != REFERENCE]
        series: dict[tuple[int, str, Any], list[dict]] = {}
        for r in rows:
            series.setdefault((r["run_index"], r["backend"], r["nodes"] if sweep else None), []).append(r)
        exponents = {
            (i, g["backend"], g["nodes"]): g for i, result in enumerate(results) for g in growth_records(result)
        }
        several_nodes = len({key[2] for key in series}) > 1
        plotted: set[str] = set()
        for (run_index, backend, nodes), group in series.items():
            group.sort(key=lambda r: r[x])
            # one colour per backend (the reference black), one line style per run
            colour = "black" if backend == REFERENCE else f"C{order.index(backend) % 10}"
            label = backend + (f" ({nodes} nodes)" if several_nodes else "")
            growth = exponents.get((run_index, backend, nodes))
            if growth is not None:
                time_exp, mem_exp = fmt_exponent(growth["time_exponent"]), fmt_exponent(growth["memory_exponent"])
                label += f": time ~n^{time_exp}, memory ~n^{mem_exp}"
            style = dict(
                marker=_MARKERS[run_index % len(_MARKERS)],
                color=colour,
                label=f"{label} [run {run_index + 1}]" if multi else label,
                linestyle=_LINESTYLES[run_index % len(_LINESTYLES)],
            )
            plotted |= _plot_series(axes, backend, run_index, group, style, is_cuda(results[run_index]), x)
        _finish_axes(axes, plotted, mem_kind, "prompt length (tokens)" if sweep else "feature nodes")
        title = labels[0] if not multi else "; ".join(f"run {i + 1}: {lab}" for i, lab in enumerate(labels))
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()


class SweepPngReporter(Reporter):
    """Speed against accuracy across backend variants (``NAME@KEY=VALUE``) of one run: for each variant,
    its speedup over the reference against its edge recall, pruned-node Jaccard and selected Jaccard."""

    format = "sweep-png"
    binary = True
    description = "PNG figure: speedup vs accuracy of backend variants (a knob sweep)"

    def render(self, results: list[dict]) -> bytes:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = [r for r in summarise(results) if r["backend"] != REFERENCE and r.get("speedup")]
        fig = Figure(figsize=(11, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        speed_ax, acc_ax = fig.subplots(1, 2)
        labels = [r["backend"].partition("@")[2] or r["backend"] for r in rows]
        x = range(len(rows))
        speed_ax.bar(x, [r["speedup"] for r in rows], color="tab:blue")
        speed_ax.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
        speed_ax.set_ylabel("speedup vs reference (same run)")
        speed_ax.set_title("speed")
        for field, marker in (("edge_recall", "o"), ("pruned_node_jaccard", "s"), ("selected_jaccard", "^")):
            acc_ax.plot(list(x), [r.get(field) for r in rows], marker=marker, label=field)
        acc_ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
        acc_ax.axhline(0.95, color="grey", linestyle="--", linewidth=1)
        acc_ax.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
        acc_ax.set_ylabel("parity vs reference")
        acc_ax.set_title("accuracy (targets: recall 0.99, pruned Jaccard 0.95)")
        acc_ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
