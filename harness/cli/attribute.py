"""``attrbench attribute``: one graph for real use (circuit-tracer's ``.pt`` or the pruned graph JSON)."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import click
import torch

from attrbench.allocator import keep_freed_memory
from attrbench.bench.schema import MAX_NODES
from attrbench.cli.options import (
    attribution_options,
    bench_settings,
    check_options,
    check_supports,
    check_writable,
    device_option,
    err,
    interrupt_on_signals,
    output_option,
    parse_options,
    resolve_device,
    resolve_spec,
    workload_options,
)
from attrbench.errors import UsageError
from attrbench.formatting import fmt_bytes
from attrbench.graph.export import save_graph, to_cpu
from attrbench.graph.validate import InvalidResult, check_result
from attrbench.plugin_manager import get_backends, report_plugin_warnings
from attrbench.progress import ProgressLine
from attrbench.workload.build import build_workload


@click.command("attribute")
@workload_options
@attribution_options
@click.option("--backend", "backend_name", required=True, help="Backend to run (one name; see list-backends).")
@click.option(
    "--nodes", "nodes", type=int, required=True, help="Feature nodes to select (circuit-tracer's max_feature_nodes)."
)
@device_option(("auto", "cpu", "cuda"), "auto", "Device to run the backend on.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pt", "json"]),
    default="pt",
    show_default=True,
    help="pt: circuit-tracer's Graph.to_pt file (Graph.from_pt loads it); json: the pruned graph JSON "
    "circuit-tracer's server and Neuronpedia read.",
)
@click.option(
    "--node-threshold",
    type=float,
    default=0.8,
    show_default=True,
    help="With --format json: keep nodes carrying this fraction of the total influence.",
)
@click.option(
    "--edge-threshold",
    type=float,
    default=0.98,
    show_default=True,
    help="With --format json: keep edges carrying this fraction of the total edge influence.",
)
@click.option("--slug", default=None, help="With --format json: the graph's slug (default: the output file name).")
@output_option(True, "File to write the graph to.")
def attribute_cmd(
    backend_name: str,
    nodes: int,
    model: str | None,
    workload_file: str | None,
    transcoders_dir: str | None,
    prompt_text: str | None,
    device: str,
    dtype: str,
    batch_size: int,
    update_interval: int,
    max_logits: int,
    logit_prob: float,
    options: tuple[str, ...],
    fmt: str,
    node_threshold: float,
    edge_threshold: float,
    slug: str | None,
    output: str,
) -> int:
    """Attribute the workload's prompt once with one backend and write the graph (.pt or pruned JSON)."""
    if not 0 < nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be a positive integer of at most {MAX_NODES:,}, got {nodes}")
    settings = bench_settings(
        device=resolve_device(device),
        dtype=dtype,
        batch_size=batch_size,
        update_interval=update_interval,
        max_logits=max_logits,
        logit_prob=logit_prob,
        options=parse_options(options),
    )
    for flag, value in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        if not (0 <= value <= 1 and math.isfinite(value)):
            raise UsageError(f"{flag} must be in [0, 1], got {value}")
    spec, preset_note = resolve_spec(model, workload_file, transcoders_dir, prompt_text, [nodes])
    known = get_backends()
    report_plugin_warnings()
    if backend_name not in known:
        raise UsageError(f"unknown backend {backend_name!r}; known backends: {', '.join(known) or 'none'}")
    backend = known[backend_name]
    check_supports(backend, settings.device, dtype)
    check_options(settings.backend_options, [backend])
    out_path = Path(output)
    check_writable(out_path, "--output")

    if preset_note:
        err(preset_note)
    interrupt_on_signals()
    keep_freed_memory()  # as the benchmark's cells do
    # the backend's scratch files (the lean store's adjacency-*.npy) live here and go on every exit path:
    # success, a failing backend, Ctrl-C, SIGTERM, SIGHUP
    with tempfile.TemporaryDirectory(prefix=".attrbench-attribute-", dir=out_path.resolve().parent) as scratch:
        built = build_workload(spec)
        progress = ProgressLine(lambda text: err(f"{backend_name}: {text}"))
        try:
            prepared = backend.prepare(built, settings.device, getattr(torch, dtype))
            start = time.perf_counter()
            result = backend.attribute(
                prepared,
                settings.attribute_settings(nodes, scratch_dir=scratch, progress=progress.update, backend=backend),
            )
            if settings.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            result = to_cpu(result)
        except Exception as exc:  # a failing backend: one line, no traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            err(f"error: backend {backend_name!r} failed: {type(exc).__name__}: {first}")
            return 1
        try:
            check_result(result, built, nodes)
        except InvalidResult as exc:  # a graph that breaks the contract is never written
            err(f"error: backend {backend_name!r} returned an {exc}; nothing written to {out_path}")
            return 1
        extra = dict(node_threshold=node_threshold, edge_threshold=edge_threshold, slug=slug) if fmt == "json" else {}
        save_graph(result, built, out_path, fmt, **extra)
        n_active = int(result.active_features.shape[0])
        err(
            f"{backend_name}: {int(result.selected_features.numel())} nodes selected of {n_active} active, "
            f"{result.adjacency_matrix.shape[0]} graph nodes, attribution {wall:.2f} s; wrote {out_path} "
            f"({fmt}, {fmt_bytes(out_path.stat().st_size)})"
        )
    return 0
