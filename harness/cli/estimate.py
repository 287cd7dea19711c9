"""``attrbench estimate``: predicted peak memory and rough time per backend, before running anything."""

from __future__ import annotations

import json
from collections.abc import Mapping

import click

from attrbench.api import Backend
from attrbench.bench.estimate import Estimate, available_memory, estimate_run_cell, estimate_table, fits, gemm_rate
from attrbench.bench.settings import BenchSettings
from attrbench.cli.options import (
    attribution_options,
    backend_names,
    backends_option,
    bench_settings,
    cuda_available,
    device_option,
    err,
    memory_limit_option,
    nodes_list_option,
    parse_int_list,
    parse_lengths,
    parse_options,
    resolve_spec,
    workload_options,
    workload_size_options,
)
from attrbench.errors import UsageError
from attrbench.plugin_manager import get_backends
from attrbench.workload.spec import WorkloadSpec, with_overrides


@click.command("estimate")
@workload_options
@attribution_options
@nodes_list_option(required=True)
@device_option(("cpu", "cuda"), "cpu", "Device the cells would run on (no GPU needed to estimate one).")
@backends_option
@memory_limit_option("Compare host peaks with this many GiB instead of the physical memory.")
@workload_size_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def estimate_cmd(
    nodes_opt: str,
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
    backends_opt: str,
    memory_limit: float | None,
    d_transcoder: int | None,
    n_tokens_opt: str | None,
    fmt: str,
) -> int:
    """Predict peak host/GPU memory and rough time per backend, prompt length and node count, without building
    weights."""
    nodes = parse_int_list(nodes_opt, "--nodes")
    lengths = parse_lengths(n_tokens_opt)
    if memory_limit is not None and not memory_limit > 0:
        raise UsageError(f"--memory-limit must be a positive number of GiB, got {memory_limit:g}")
    settings = bench_settings(
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        update_interval=update_interval,
        max_logits=max_logits,
        logit_prob=logit_prob,
        options=parse_options(options),
        memory_limit=memory_limit,
    )
    spec, note = resolve_spec(
        model, workload_file, transcoders_dir, prompt_text, nodes, d_transcoder, lengths[-1] if lengths else None
    )
    known = get_backends()
    names = backend_names(backends_opt, known)
    if note:
        err(note)
    rate = gemm_rate(device, measure=device == "cpu" or cuda_available())
    estimates = []
    specs = [with_overrides(spec, n_tokens=t) for t in lengths] if lengths else [spec]
    for at in specs:
        for n in nodes:
            estimates += _estimates(at, n, names, known, settings, rate)
    host, gpu = available_memory(device, settings.memory_limit_bytes if memory_limit else None)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "workload": spec.name,
                    "available_host_bytes": host,
                    "available_gpu_bytes": gpu,
                    "gemm_flops": rate,
                    "cells": [dict(e.to_dict(), fits=fits(e, host, gpu)[0]) for e in estimates],
                },
                indent=1,
            )
        )
    else:
        click.echo(
            f"workload {spec.name}: about {spec.estimated_active_features} active features"
            + (f" at {spec.prompt.length} tokens" if len(specs) > 1 else "")
            + f"; available: host {host / 2**30:.1f} GiB"
            + (f", GPU {gpu / 2**30:.1f} GiB" if gpu else "")
            + f"; GEMM rate {rate / 1e9:.0f} GFLOP/s"
        )
        click.echo(estimate_table(estimates, host, gpu, by_length=len(specs) > 1))
    return 0


def _estimates(
    spec: WorkloadSpec, n: int, names: list[str], known: Mapping[str, Backend], settings: BenchSettings, rate: float
) -> list[Estimate]:
    """Every backend of ``names`` at ``n`` nodes on ``spec`` (a line on stderr for a backend that declares no
    cost model)."""
    out = []
    for b in names:
        est = estimate_run_cell(spec, b, known[b], n, settings, rate)
        if est is None:
            err(f"{b}: declares no cost model; it cannot be estimated")
        else:
            out.append(est)
    return out
