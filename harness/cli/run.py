"""``attrbench run``: every backend x node count x repeat, each cell isolated by the launcher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from attrbench.api import Launcher
from attrbench.bench.lock import output_lock
from attrbench.bench.results import ResultsWriteError, load_results
from attrbench.bench.runner import RunConfig, run
from attrbench.bench.settings import BenchSettings
from attrbench.bench.summary import render
from attrbench.cli.options import (
    DEFAULT_NODES,
    attribution_options,
    backend_names,
    backends_option,
    bench_settings,
    check_options,
    check_plan_size,
    check_supports,
    check_writable,
    device_option,
    err,
    interrupt_on_signals,
    memory_limit_option,
    nodes_list_option,
    output_option,
    parse_int_list,
    parse_lengths,
    parse_options,
    resolve_device,
    resolve_spec,
    workload_options,
    workload_size_options,
)
from attrbench.errors import UsageError
from attrbench.graph.verdicts import FAILED
from attrbench.plugin_manager import get_backends, get_launchers, get_tracker_factories, report_plugin_warnings
from attrbench.workload.spec import WorkloadSpec


def render_doc(doc: dict[str, Any], fmt: str) -> str:
    """The results as ``fmt``; JSON when no reporter can render them (the results still reach stdout)."""
    if fmt == "json":
        return json.dumps(doc, indent=1, default=str)
    try:
        text = render([doc], fmt)
    except UsageError as exc:  # e.g. the reporters plugin failed to load
        err(f"warning: {exc}; printing the results as JSON")
        return json.dumps(doc, indent=1, default=str)
    return text.decode() if isinstance(text, bytes) else text


def choose_launcher(name: str, ray_address: str | None) -> Launcher:
    """The registered launcher ``name``, checked against its command-line options (not yet configured)."""
    launchers = get_launchers()
    if name not in launchers:
        raise UsageError(f"unknown launcher {name!r}; known launchers: {', '.join(launchers) or 'none'}")
    if ray_address is not None and name != "ray":
        raise UsageError("--ray-address goes with --launcher ray")
    return launchers[name]


def configure_launcher(launcher: Launcher, ray_address: str | None) -> None:
    """Hand a launcher its command-line options (``ray`` connects to its cluster here)."""
    configure = getattr(launcher, "configure", None)
    if callable(configure):
        configure(**({"address": ray_address} if ray_address is not None else {}))


@click.command("run")
@workload_options
@attribution_options
@backends_option
@nodes_list_option(required=False)
@device_option(("auto", "cpu", "cuda"), "auto", "Device to run the backends on.")
@click.option("--repeats", type=int, default=1, show_default=True, help="Timed repeats of every cell.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=None,
    help="Seconds the timed attribution of one cell may take before it is killed (status timeout).",
)
@output_option(False, "Results JSON file, rewritten atomically after every cell.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "markdown", "json"]),
    default="table",
    show_default=True,
    help="What to print on stdout after the run.",
)
@click.option(
    "--resume",
    "resume_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Results file of an earlier, interrupted run: its ok cells are kept and not run again "
    "(also the default --output).",
)
@click.option("--no-warmup", is_flag=True, default=False, help="Skip the untimed warm-up attribution.")
@workload_size_options
@memory_limit_option(
    "Memory limit (RLIMIT_DATA: heap and anonymous mappings) of each CPU cell in GiB; an "
    "allocation beyond it makes the cell 'oom'. Default: physical memory + swap on CPU, none on "
    "CUDA; 0 disables."
)
@click.option(
    "--strict",
    is_flag=True,
    default=False,
    help="Do not launch cells whose predicted peak memory (attrbench estimate) exceeds what is "
    "available; record them as 'oom'.",
)
@click.option(
    "--allow-parity-failures",
    is_flag=True,
    default=False,
    help="Exit 0 even when an exact backend's parity verdict is 'failed' (still shown in every report).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    default=False,
    help="Print the full traceback of every failed cell on stderr after the run.",
)
@click.option(
    "--launcher",
    "launcher_name",
    default="process",
    show_default=True,
    help="How cells are run: 'process' (a fresh child process per cell on this machine), 'ray' (Ray "
    "tasks on a cluster, one cell per node or GPU; pip install 'attrbench[ray]') or a launcher "
    "plugin's name.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDRESS",
    help="With --launcher ray: the cluster to connect to (what 'ray start --head' prints); default: "
    "start a local Ray instance.",
)
@click.option(
    "--retries",
    type=int,
    default=0,
    show_default=True,
    help="Times a cell whose worker was lost (node died, process killed) is run again.",
)
@click.option(
    "--scratch",
    "scratch_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder for the run's graph files (default: next to --output). With --launcher ray on several "
    "nodes it must be on a filesystem every node shares.",
)
def run_cmd(
    backends_opt: str,
    nodes_opt: str | None,
    model: str | None,
    workload_file: str | None,
    device: str,
    dtype: str,
    batch_size: int,
    update_interval: int,
    max_logits: int,
    logit_prob: float,
    repeats: int,
    timeout_s: float | None,
    output: str | None,
    fmt: str,
    resume_file: str | None,
    no_warmup: bool,
    options: tuple[str, ...],
    d_transcoder: int | None,
    n_tokens_opt: str | None,
    memory_limit: float | None,
    strict: bool,
    transcoders_dir: str | None,
    prompt_text: str | None,
    allow_parity_failures: bool,
    verbose: bool,
    launcher_name: str,
    ray_address: str | None,
    retries: int,
    scratch_dir: str | None,
) -> int:
    """Run the benchmark: every backend x node count x repeat in its own child process."""
    nodes = parse_int_list(nodes_opt, "--nodes") if nodes_opt is not None else list(DEFAULT_NODES)
    lengths = parse_lengths(n_tokens_opt)
    n_tokens = lengths[-1] if lengths else None
    opts = parse_options(options)
    settings = bench_settings(
        device=resolve_device(device),
        dtype=dtype,
        batch_size=batch_size,
        update_interval=update_interval,
        max_logits=max_logits,
        logit_prob=logit_prob,
        repeats=repeats,
        timeout_s=timeout_s,
        warmup=not no_warmup,
        options=opts,
        memory_limit=memory_limit,
        strict=strict,
        retries=retries,
    )
    spec, preset_note = resolve_spec(model, workload_file, transcoders_dir, prompt_text, nodes, d_transcoder, n_tokens)
    known = get_backends()
    get_launchers()  # like the trackers: a launcher plugin that fails is reported here
    get_tracker_factories()  # a tracker plugin that fails is reported here, not only inside the cells
    report_plugin_warnings()
    names = backend_names(backends_opt, known)
    for name in names:
        check_supports(known[name], settings.device, dtype)
    check_options(opts, [known[n] for n in names])
    check_plan_size(len(names), len(nodes), repeats, len(lengths or [None]))
    launcher = choose_launcher(launcher_name, ray_address)

    output = output or resume_file
    if output is not None:
        check_writable(Path(output), "--output")
    # held from before --resume is read until the run has written its last cell
    with output_lock(Path(output) if output else None):
        config = _config(spec, names, nodes, settings, output, resume_file, scratch_dir, lengths)
        configure_launcher(launcher, ray_address)
        return _run_locked(config, launcher, preset_note, fmt, verbose, allow_parity_failures)


def _config(
    spec: WorkloadSpec,
    names: list[str],
    nodes: list[int],
    settings: BenchSettings,
    output: str | None,
    resume_file: str | None,
    scratch_dir: str | None,
    lengths: list[int] | None = None,
) -> RunConfig:
    """The run's configuration, with the cells of ``--resume`` (checked against this workload and settings)."""
    resume = None
    if resume_file is not None:
        resume = load_results(resume_file)
        if resume["workload"].get("hash") != spec.content_hash():
            raise UsageError(
                f"--resume {resume_file} was made with another workload "
                f"(hash {resume['workload'].get('hash')}, this one {spec.content_hash()})"
            )
        if not settings.resumable_from(resume["settings"]):
            raise UsageError(
                f"--resume {resume_file} was made with other settings (device, dtype, batch size, "
                "update interval, logits or backend options differ)"
            )
    return RunConfig(
        spec=spec,
        backends=names,
        nodes=nodes,
        settings=settings,
        output=Path(output) if output else None,
        resume=resume,
        scratch=Path(scratch_dir) if scratch_dir else None,
        lengths=lengths,
    )


def _run_locked(
    config: RunConfig, launcher: Launcher, preset_note: str | None, fmt: str, verbose: bool, allow_parity_failures: bool
) -> int:
    """Run ``config`` while this process holds the output file's lock; the exit code."""
    if preset_note:
        err(preset_note)
    interrupt_on_signals()
    try:
        doc = run(config, launcher)
    except KeyboardInterrupt:
        where = f"; finished cells are in {config.output}" if config.output else ""
        err(f"interrupted{where}")
        return 130
    except ResultsWriteError:  # reported by the runner (one line + the unwritten cell as JSON)
        return 1
    click.echo(render_doc(doc, fmt))
    return exit_code(doc, verbose, allow_parity_failures)


def exit_code(doc: dict[str, Any], verbose: bool = False, allow_parity_failures: bool = False) -> int:
    """1 when a cell errored or returned an invalid graph, or (unless allowed) an exact backend's parity
    failed; else 0. Says why on stderr; with ``verbose`` also prints each failed cell's traceback."""
    code = 0
    sweep = len({cell.get("n_tokens") for cell in doc["cells"]}) > 1
    for cell in doc["cells"]:
        tokens = f" n_tokens={cell.get('n_tokens')}" if sweep else ""
        label = f"{cell['backend']}{tokens} nodes={cell['nodes']} repeat={cell['repeat']}"
        if verbose and cell.get("error_traceback"):
            err(f"traceback of {label}:\n{cell['error_traceback'].rstrip()}")
        if cell.get("status") in ("error", "invalid"):
            code = 1
        elif cell.get("verdict") == FAILED:
            if allow_parity_failures:
                err(
                    f"warning: parity failed for {label} (allowed by --allow-parity-failures): "
                    f"{cell.get('verdict_note')}"
                )
            else:
                err(f"error: parity failed for {label}: {cell.get('verdict_note')}")
                code = 1
    return code
