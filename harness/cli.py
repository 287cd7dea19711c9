"""The ``attrbench`` command line: run, list-backends, report, gate.

Exit codes: 0 done (cells may be oom/timeout), 1 a cell failed with status "error" (run) or the gate
failed, 2 bad usage (one line on stderr, never a traceback), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from attrbench.errors import UsageError

DEFAULT_NODES = (200, 800)


def _err(message: str) -> None:
    click.echo(f"attrbench: {message}", err=True)


def _parse_int_list(value: str, flag: str) -> list[int]:
    out = []
    for part in value.split(","):
        part = part.strip()
        try:
            n = int(part)
        except ValueError:
            raise UsageError(f"{flag} takes positive integers separated by commas, got {part!r}") from None
        if n <= 0:
            raise UsageError(f"{flag} takes positive integers, got {n}")
        out.append(n)
    if not out:
        raise UsageError(f"{flag} needs at least one value")
    return list(dict.fromkeys(out))


def _parse_options(values: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise UsageError(f"--option takes KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UsageError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _check_writable(path: Path, flag: str) -> None:
    if path.exists() and path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not writable: {exc.strerror or exc}") from None


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if device == "cuda" and not _cuda_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return device


def _render(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=1, default=str)
    from attrbench.reporting import render

    try:
        text = render([doc], fmt)
    except UsageError as exc:  # e.g. the reporters plugin failed to load: the results still reach stdout
        _err(f"warning: {exc}; printing the results as JSON")
        return json.dumps(doc, indent=1, default=str)
    return text.decode() if isinstance(text, bytes) else text


def _resolve_spec(model, workload_file, transcoders_dir, prompt_text, nodes, d_transcoder=None, n_tokens=None):
    """The workload of --model PRESET|DIR (+ --transcoders DIR --prompt TEXT) or --workload FILE, checked
    against the node counts; returns (spec, note about an automatically chosen preset or None)."""
    from attrbench import workload as wl

    if model is not None and workload_file is not None:
        raise UsageError("--model and --workload are mutually exclusive; give one")
    local = model is not None and model not in wl.PRESETS and (os.path.isdir(model) or transcoders_dir is not None)
    if (transcoders_dir is not None or prompt_text is not None) and not local:
        raise UsageError("--transcoders and --prompt go with --model DIR (a local Hugging Face model folder)")
    preset_note = None
    if local:
        if transcoders_dir is None or prompt_text is None:
            raise UsageError("--model DIR needs --transcoders DIR and --prompt TEXT")
        if d_transcoder is not None or n_tokens is not None:
            raise UsageError("--d-transcoder and --n-tokens do not apply to a local model folder")
        return wl.local_spec(model, transcoders_dir, prompt_text), None
    if workload_file is not None:
        spec = wl.load_workload_file(workload_file)
    elif model is not None:
        spec = wl.preset(model)
    else:
        name = wl.smallest_preset_for(max(nodes))
        spec = wl.preset(name)
        preset_note = f"--model not given: using preset {name!r} (smallest with >= {max(nodes)} active features)"
    spec = wl.with_overrides(spec, d_transcoder=d_transcoder, n_tokens=n_tokens)
    active = spec.estimated_active_features
    if spec.source is None and max(nodes) > active:
        try:
            hint = f"; preset {wl.smallest_preset_for(max(nodes))!r} has enough"
        except UsageError as exc:
            hint = f"; {exc}"
        raise UsageError(f"--nodes {max(nodes)} is more than workload {spec.name!r} has active features "
                         f"(about {active}){hint}")
    return spec, preset_note


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attrbench", message="attrbench %(version)s")
def cli() -> None:
    """Benchmark circuit-tracer attribution backends: speed, memory and parity with the reference."""


def _interrupt_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop a run cleanly (children killed, finished cells kept, exit 130).

    SIGINT is set explicitly: Python leaves it ignored when the process inherited it ignored, as every
    command started in the background by a non-interactive shell does.
    """
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def _check_supports(backend, device_kind: str, dtype: str) -> None:
    """A backend asked for a device or dtype it does not declare is a usage error."""
    if device_kind not in backend.devices:
        raise UsageError(f"backend {backend.name!r} does not support device {device_kind!r} (it supports "
                         f"{', '.join(backend.devices)}); choose other --backends or --device")
    if dtype not in backend.dtypes:
        raise UsageError(f"backend {backend.name!r} does not support dtype {dtype!r} (it supports "
                         f"{', '.join(backend.dtypes)}); choose other --backends or --dtype")


def _backend_names(backends_opt: str, known) -> list[str]:
    """``--backends``: ``all`` or a comma-separated list of registered names (or ``NAME@KEY=VALUE`` variants)."""
    if backends_opt.strip() == "all":
        return list(known)
    names = list(dict.fromkeys(n.strip() for n in backends_opt.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(f"unknown backend {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"known backends: {', '.join(known)}")
    return names


def _stack(*decorators: Callable) -> Callable:
    """Apply several click decorators as one (options shared by several commands)."""
    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return apply


workload_options = _stack(
    click.option("--model", "model", default=None,
                 help="Workload preset name (tiny, small, large, qwen3-4b) or a local Hugging Face model folder "
                      "(with --transcoders and --prompt). Default: the smallest preset with enough active "
                      "features for the largest --nodes."),
    click.option("--workload", "workload_file", default=None, type=click.Path(dir_okay=False),
                 help="Workload JSON file (model/transcoders/prompt/seed); excludes --model."),
    click.option("--transcoders", "transcoders_dir", default=None,
                 help="circuit-tracer transcoders: a config.yaml, a folder holding one, a folder of layer_{i}.safetensors "
                      "/ layer_{i}.npz / W_enc_{i}+W_dec_{i}.safetensors (cross-layer), or a repo id in the local "
                      "Hugging Face cache; with --model DIR|REPO_ID."),
    click.option("--prompt", "prompt_text", default=None, help="Prompt text; with --model DIR --transcoders DIR."),
)

settings_options = _stack(
    click.option("--dtype", default="float32", show_default=True, help="Model dtype: float32 or bfloat16."),
    click.option("--batch-size", type=int, default=512, show_default=True,
                 help="Attribution batch size (circuit-tracer's default is 512)."),
    click.option("--update-interval", type=int, default=4, show_default=True,
                 help="Re-rank features every this many batches (circuit-tracer's update_interval; "
                      "Neuronpedia's graph server uses 1000)."),
    click.option("--max-logits", type=int, default=10, show_default=True, help="Maximum number of logit targets."),
    click.option("--logit-prob", type=float, default=0.95, show_default=True,
                 help="Cumulative probability the logit targets must cover."),
    click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                 help="Backend option passed in settings.options (repeatable; VALUE parsed as JSON when it can "
                      "be), e.g. approx_threshold=0.003 or edge_storage=lean. A backend named NAME@KEY=VALUE in "
                      "--backends fixes options for that one column instead."),
)


@cli.command("list-backends")
def list_backends() -> int:
    """List every registered backend with its properties."""
    from tabulate import tabulate

    from attrbench.manager import get_backends, report_plugin_warnings

    backends = get_backends()
    report_plugin_warnings()
    rows = []
    for b in backends.values():
        p = b.properties()
        opts = ", ".join(f"{k}={v!r}" for k, v in p["options"].items()) or "-"
        rows.append([p["name"], "exact" if p["exact"] else "approximate", ",".join(p["devices"]),
                     ",".join(p["dtypes"]), opts, p["description"]])
    click.echo(tabulate(rows, headers=["name", "kind", "devices", "dtypes", "options", "description"],
                        tablefmt="simple"))
    return 0


@cli.command("run")
@workload_options
@settings_options
@click.option("--backends", "backends_opt", default="all", show_default=True,
              help="Backends to run: 'all' or a comma-separated list of names (see list-backends).")
@click.option("--nodes", "nodes_opt", default=None,
              help="Feature node counts (max_feature_nodes), comma-separated. [default: 200,800]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Device to run the backends on.")
@click.option("--repeats", type=int, default=1, show_default=True, help="Timed repeats of every cell.")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Seconds the timed attribution of one cell may take before it is killed (status timeout).")
@click.option("--output", "-o", "output", default=None, type=click.Path(dir_okay=False),
              help="Results JSON file, rewritten atomically after every cell.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table",
              show_default=True, help="What to print on stdout after the run.")
@click.option("--resume", "resume_file", default=None, type=click.Path(dir_okay=False),
              help="Results file of an earlier, interrupted run: its ok cells are kept and not run again "
                   "(also the default --output).")
@click.option("--no-warmup", is_flag=True, default=False, help="Skip the untimed warm-up attribution.")
@click.option("--d-transcoder", type=int, default=None, help="Override the workload's transcoder width.")
@click.option("--n-tokens", type=int, default=None, help="Override the workload's prompt length.")
@click.option("--memory-limit", "memory_limit", type=float, default=None, metavar="GIB",
              help="Memory limit (RLIMIT_DATA: heap and anonymous mappings) of each CPU cell in GiB; an allocation beyond it makes the "
                   "cell 'oom'. Default: physical memory + swap on CPU, none on CUDA; 0 disables.")
@click.option("--strict", is_flag=True, default=False,
              help="Do not launch cells whose predicted peak memory (attrbench estimate) exceeds what is "
                   "available; record them as 'oom'.")
def run_cmd(backends_opt, nodes_opt, model, workload_file, device, dtype, batch_size, update_interval, max_logits,
            logit_prob, repeats, timeout_s, output, fmt, resume_file, no_warmup, options, d_transcoder,
            n_tokens, memory_limit, strict, transcoders_dir, prompt_text) -> int:
    """Run the benchmark: every backend x node count x repeat in its own child process."""
    from attrbench.manager import get_backends, report_plugin_warnings
    from attrbench.results import load_results, settings_match
    from attrbench.runner import RunConfig, run

    # ---- validate everything before any work starts
    nodes = _parse_int_list(nodes_opt, "--nodes") if nodes_opt is not None else list(DEFAULT_NODES)
    if model is not None and workload_file is not None:
        raise UsageError("--model and --workload are mutually exclusive; give one")
    if dtype not in ("float32", "bfloat16"):
        raise UsageError(f"--dtype {dtype!r} is not supported; use float32 or bfloat16")
    for flag, value in (("--batch-size", batch_size), ("--repeats", repeats), ("--update-interval", update_interval),
                        ("--max-logits", max_logits)):
        if value <= 0:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    if not 0 < logit_prob <= 1:
        raise UsageError(f"--logit-prob must be in (0, 1], got {logit_prob}")
    if timeout_s is not None and timeout_s <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout_s:g}")
    if memory_limit is not None and memory_limit < 0:
        raise UsageError(f"--memory-limit must be a number of GiB >= 0 (0 = no limit), got {memory_limit:g}")
    for flag, value in (("--d-transcoder", d_transcoder), ("--n-tokens", n_tokens)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be a positive integer, got {value}")

    spec, preset_note = _resolve_spec(model, workload_file, transcoders_dir, prompt_text, nodes, d_transcoder,
                                      n_tokens)

    known = get_backends()
    report_plugin_warnings()
    names = _backend_names(backends_opt, known)
    if not names:
        raise UsageError("no backends are registered")
    device = _resolve_device(device)
    device_kind = device.split(":")[0]
    for n in names:
        _check_supports(known[n], device_kind, dtype)
    opts = _parse_options(options)
    declared = {k for n in names for k in known[n].option_defaults}
    stray = sorted(set(opts) - declared)
    if stray:
        raise UsageError(f"--option {stray[0]} is not an option of any selected backend "
                         f"(declared: {', '.join(sorted(declared)) or 'none'})")

    resume = None
    if resume_file is not None:
        resume = load_results(resume_file)
        if output is None:
            output = resume_file
    config = RunConfig(
        spec=spec, backends=names, nodes=nodes, device=device, dtype=dtype, batch_size=batch_size,
        update_interval=update_interval, max_n_logits=max_logits, desired_logit_prob=logit_prob, repeats=repeats,
        timeout_s=timeout_s, warmup=not no_warmup, options=opts, output=Path(output) if output else None,
        resume=resume, memory_limit_gib=memory_limit, strict=strict,
    )
    if resume is not None:
        if resume["workload"].get("hash") != spec.content_hash():
            raise UsageError(f"--resume {resume_file} was made with another workload "
                             f"(hash {resume['workload'].get('hash')}, this one {spec.content_hash()})")
        if not settings_match(resume["settings"], config.settings()):
            raise UsageError(f"--resume {resume_file} was made with other settings (device, dtype, batch size, "
                             "update interval, logits or backend options differ)")
    if config.output is not None:
        _check_writable(config.output, "--output")

    # ---- run
    if preset_note:
        _err(preset_note)
    _interrupt_on_signals()
    try:
        doc = run(config)
    except KeyboardInterrupt:
        where = f"; finished cells are in {config.output}" if config.output else ""
        _err(f"interrupted{where}")
        return 130
    click.echo(_render(doc, fmt))
    return 1 if any(c.get("status") == "error" for c in doc["cells"]) else 0


@cli.command("estimate")
@workload_options
@click.option("--nodes", "nodes_opt", required=True, help="Feature node counts, comma-separated.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Device the cells would run on (no GPU needed to estimate one).")
@click.option("--dtype", default="float32", show_default=True, help="float32 or bfloat16.")
@click.option("--batch-size", type=int, default=512, show_default=True, help="Attribution batch size.")
@click.option("--update-interval", type=int, default=4, show_default=True, help="Re-rank every this many batches.")
@click.option("--max-logits", type=int, default=10, show_default=True, help="Maximum number of logit targets.")
@click.option("--backends", "backends_opt", default="all", show_default=True,
              help="'all' or a comma-separated list of backend names.")
@click.option("--memory-limit", "memory_limit", type=float, default=None, metavar="GIB",
              help="Compare host peaks with this many GiB instead of the physical memory.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def estimate_cmd(nodes_opt, model, workload_file, transcoders_dir, prompt_text, device, dtype, batch_size,
                 update_interval, max_logits, backends_opt, memory_limit, fmt) -> int:
    """Predict peak host/GPU memory and rough time per backend and node count, without building weights."""
    from attrbench.estimate import available_memory, estimate_cell, estimate_table, fits, gemm_rate
    from attrbench.manager import get_backends

    nodes = _parse_int_list(nodes_opt, "--nodes")
    if dtype not in ("float32", "bfloat16"):
        raise UsageError(f"--dtype {dtype!r} is not supported; use float32 or bfloat16")
    for flag, value in (("--batch-size", batch_size), ("--update-interval", update_interval),
                        ("--max-logits", max_logits)):
        if value <= 0:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    if memory_limit is not None and memory_limit <= 0:
        raise UsageError(f"--memory-limit must be a positive number of GiB, got {memory_limit:g}")
    spec, note = _resolve_spec(model, workload_file, transcoders_dir, prompt_text, nodes)
    known = get_backends()
    names = _backend_names(backends_opt, known)
    if note:
        _err(note)
    rate = gemm_rate(device, measure=device == "cpu" or _cuda_available())
    estimates = [estimate_cell(spec, b, n, device, dtype, batch_size, update_interval, max_logits, rate=rate)
                 for n in nodes for b in names]
    host, gpu = available_memory(device, int(memory_limit * 2**30) if memory_limit else None)
    if fmt == "json":
        click.echo(json.dumps({"workload": spec.name, "available_host_bytes": host, "available_gpu_bytes": gpu,
                               "gemm_flops": rate,
                               "cells": [dict(e.to_dict(), fits=fits(e, host, gpu)[0]) for e in estimates]},
                              indent=1))
    else:
        click.echo(f"workload {spec.name}: about {spec.estimated_active_features} active features; "
                   f"available: host {host / 2**30:.1f} GiB"
                   + (f", GPU {gpu / 2**30:.1f} GiB" if gpu else "")
                   + f"; GEMM rate {rate / 1e9:.0f} GFLOP/s")
        click.echo(estimate_table(estimates, host, gpu))
    return 0


@cli.command("attribute")
@workload_options
@settings_options
@click.option("--backend", "backend_name", required=True, help="Backend to run (one name; see list-backends).")
@click.option("--nodes", "nodes", type=int, required=True,
              help="Feature nodes to select (circuit-tracer's max_feature_nodes).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Device to run the backend on.")
@click.option("--format", "fmt", type=click.Choice(["pt", "json"]), default="pt", show_default=True,
              help="pt: circuit-tracer's Graph.to_pt file (Graph.from_pt loads it); json: the pruned graph JSON "
                   "circuit-tracer's server and Neuronpedia read.")
@click.option("--node-threshold", type=float, default=0.8, show_default=True,
              help="With --format json: keep nodes carrying this fraction of the total influence.")
@click.option("--edge-threshold", type=float, default=0.98, show_default=True,
              help="With --format json: keep edges carrying this fraction of the total edge influence.")
@click.option("--slug", default=None, help="With --format json: the graph's slug (default: the output file name).")
@click.option("--output", "-o", "output", required=True, type=click.Path(dir_okay=False),
              help="File to write the graph to.")
def attribute_cmd(backend_name, nodes, model, workload_file, transcoders_dir, prompt_text, device, dtype, batch_size,
                  update_interval, max_logits, logit_prob, options, fmt, node_threshold, edge_threshold, slug,
                  output) -> int:
    """Attribute the workload's prompt once with one backend and write the graph (.pt or pruned JSON)."""
    import time

    from attrbench.manager import get_backends, report_plugin_warnings
    from attrbench.reporting import fmt_bytes

    for flag, value in (("--nodes", nodes), ("--batch-size", batch_size), ("--update-interval", update_interval),
                        ("--max-logits", max_logits)):
        if value <= 0:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    if dtype not in ("float32", "bfloat16"):
        raise UsageError(f"--dtype {dtype!r} is not supported; use float32 or bfloat16")
    if not 0 < logit_prob <= 1:
        raise UsageError(f"--logit-prob must be in (0, 1], got {logit_prob}")
    for flag, value in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        if not 0 <= value <= 1:
            raise UsageError(f"{flag} must be in [0, 1], got {value}")
    spec, preset_note = _resolve_spec(model, workload_file, transcoders_dir, prompt_text, [nodes])
    known = get_backends()
    report_plugin_warnings()
    if backend_name not in known:
        raise UsageError(f"unknown backend {backend_name!r}; known backends: {', '.join(known) or 'none'}")
    backend = known[backend_name]
    device = _resolve_device(device)
    _check_supports(backend, device.split(":")[0], dtype)
    opts = _parse_options(options)
    stray = sorted(set(opts) - set(backend.option_defaults))
    if stray:
        raise UsageError(f"--option {stray[0]} is not an option of backend {backend_name!r} "
                         f"(declared: {', '.join(sorted(backend.option_defaults)) or 'none'})")
    out_path = Path(output)
    _check_writable(out_path, "--output")

    import torch

    from attrbench.backend import AttributeSettings
    from attrbench.build import build_workload
    from attrbench.export import save_graph, to_cpu
    from attrbench.progress import ProgressLine

    if preset_note:
        _err(preset_note)
    built = build_workload(spec)
    progress = ProgressLine(lambda text: _err(f"{backend_name}: {text}"))
    settings = AttributeSettings(max_feature_nodes=nodes, batch_size=batch_size, update_interval=update_interval,
                                 max_n_logits=max_logits, desired_logit_prob=logit_prob, options=opts,
                                 progress=progress.update)
    try:
        prepared = backend.prepare(built, device, getattr(torch, dtype))
        start = time.perf_counter()
        result = backend.attribute(prepared, settings)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        result = to_cpu(result)
    except Exception as exc:  # a failing backend: one line, no traceback
        _err(f"error: backend {backend_name!r} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1
    kw = dict(node_threshold=node_threshold, edge_threshold=edge_threshold, slug=slug) if fmt == "json" else {}
    save_graph(result, built, out_path, fmt, **kw)
    n_active = int(result.active_features.shape[0])
    size_text = fmt_bytes(out_path.stat().st_size)
    _err(f"{backend_name}: {int(result.selected_features.numel())} nodes selected of {n_active} active, "
         f"{result.adjacency_matrix.shape[0]} graph nodes, attribution {wall:.2f} s; wrote {out_path} "
         f"({fmt}, {size_text})")
    return 0


@cli.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", default="table", show_default=True,
              help="Report format: table, markdown, csv, json, png (wall time, memory, speedup, parity vs "
                   "nodes), sweep-png (speed vs accuracy of NAME@KEY=VALUE variants), or a plugin's format.")
@click.option("--output", "-o", "output", default=None, type=click.Path(dir_okay=False),
              help="Write the report to this file instead of stdout (required for the png formats).")
def report_cmd(results, fmt, output) -> int:
    """Render one or more results files (RESULTS.json ...) as a table, markdown, csv, json or png."""
    try:
        from attrbench.reporting import load_results_file, render
    except ImportError as exc:
        raise UsageError(f"reporting is not available in this installation ({exc})") from None
    docs = [load_results_file(p) for p in results]
    if fmt.endswith("png") and output is None:
        raise UsageError(f"--format {fmt} needs --output FILE.png")
    if output is not None:
        _check_writable(Path(output), "--output")
    out = render(docs, fmt, sources=list(results))
    if output is not None:
        mode = "wb" if isinstance(out, bytes) else "w"
        with open(output, mode) as f:
            f.write(out)
        _err(f"wrote {output}")
    else:
        click.echo(out.decode() if isinstance(out, bytes) else out)
    return 0


@cli.command("gate")
@click.option("--baseline", required=True, type=click.Path(dir_okay=False), help="Baseline results JSON file.")
@click.argument("current", type=click.Path(dir_okay=False))
@click.option("--max-speedup-drop", type=float, default=0.25, show_default=True,
              help="Allowed relative drop of a backend's speedup over the reference (0.25 = 25%).")
@click.option("--max-memory-growth", type=float, default=0.25, show_default=True,
              help="Allowed relative growth of a backend's peak memory ratio to the reference.")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown"]), default="table", show_default=True,
              help="Output format of the gate report.")
def gate_cmd(baseline, current, max_speedup_drop, max_memory_growth, fmt) -> int:
    """Compare CURRENT results with --baseline; exit 1 on a regression."""
    try:
        from attrbench.gate import run_gate
        from attrbench.reporting import load_results_file
    except ImportError as exc:
        raise UsageError(f"the gate is not available in this installation ({exc})") from None
    base = load_results_file(baseline)
    cur = load_results_file(current)
    code, text = run_gate(base, cur, max_speedup_drop=max_speedup_drop, max_memory_growth=max_memory_growth,
                          format=fmt)
    click.echo(text)
    return code


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every usage problem is one line on stderr and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        rv = cli.main(args=argv, prog_name="attrbench", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        msg = exc.format_message().replace("\n", " ")
        cmd = f" {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else ""
        _err(f"error: {msg} (see attrbench{cmd} --help)")
        sys.exit(2)
    except UsageError as exc:
        _err(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        sys.exit(2)
    except click.exceptions.ClickException as exc:
        _err(f"error: {exc.format_message().splitlines()[0]}")
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _err("interrupted")
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
