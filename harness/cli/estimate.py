"""``attrbench estimate``: predicted peak memory and rough time per backend, before running anything."""

from __future__ import annotations

import json

import click

from attrbench.bench.estimate import available_memory, estimate_backend, estimate_table, fits, gemm_rate
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
    parse_options,
    resolve_spec,
    workload_options,
)
from attrbench.errors import UsageError
from attrbench.plugin_manager import get_backends


@click.command("estimate")
@workload_options
@attribution_options
@nodes_list_option(required=True)
@device_option(("cpu", "cuda"), "cpu", "Device the cells would run on (no GPU needed to estimate one).")
@backends_option
@memory_limit_option("Compare host peaks with this many GiB instead of the physical memory.")
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
    fmt: str,
) -> int:
    """Predict peak host/GPU memory and rough time per backend and node count, without building weights."""
    nodes = parse_int_list(nodes_opt, "--nodes")
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
    spec, note = resolve_spec(model, workload_file, transcoders_dir, prompt_text, nodes)
    known = get_backends()
    names = backend_names(backends_opt, known)
    if note:
        err(note)
    rate = gemm_rate(device, measure=device == "cpu" or cuda_available())
    estimates = []
    for n in nodes:
        for b in names:
            est = estimate_backend(
                spec,
                b,
                known[b],
                n,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                update_interval=update_interval,
                max_n_logits=max_logits,
                options=settings.backend_options,
                rate=rate,
            )
            if est is None:
                err(f"{b}: declares no cost model; it cannot be estimated")
            else:
                estimates.append(est)
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
            f"workload {spec.name}: about {spec.estimated_active_features} active features; "
            f"available: host {host / 2**30:.1f} GiB"
            + (f", GPU {gpu / 2**30:.1f} GiB" if gpu else "")
            + f"; GEMM rate {rate / 1e9:.0f} GFLOP/s"
        )
        click.echo(estimate_table(estimates, host, gpu))
    return 0
