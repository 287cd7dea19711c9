"""``attrbench report`` and ``attrbench gate``: what a results file says, and whether it regressed."""

from __future__ import annotations

from pathlib import Path

import click

from attrbench.bench.gate import run_gate
from attrbench.bench.results import load_results
from attrbench.bench.summary import render
from attrbench.cli.options import check_writable, err, output_option
from attrbench.errors import UsageError
from attrbench.formatting import short_error
from attrbench.plugin_manager import get_reporters, report_plugin_warnings


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    help="Report format: table, markdown, csv, json, png (wall time, memory, speedup, parity vs "
    "nodes), sweep-png (speed vs accuracy of NAME@KEY=VALUE variants), or a plugin's format.",
)
@output_option(False, "Write the report to this file instead of stdout (required for the png formats).")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    default=False,
    help="Also print the full error and traceback of every failed cell on stderr.",
)
def report_cmd(results: tuple[str, ...], fmt: str, output: str | None, verbose: bool) -> int:
    """Render one or more results files (RESULTS.json ...) as a table, markdown, csv, json or png."""
    docs = [load_results(p) for p in results]
    get_reporters()  # a reporter plugin that fails is named here, with its exception type
    report_plugin_warnings()
    if verbose:
        for path, doc in zip(results, docs, strict=True):
            for cell in doc["cells"]:
                if cell.get("status") != "ok":
                    err(
                        f"{path}: {cell['backend']} nodes={cell['nodes']} repeat={cell['repeat']}: {cell['status']}: "
                        f"{short_error(cell.get('error'), None)}"
                    )
                    if cell.get("error_traceback"):
                        err(cell["error_traceback"].rstrip())
    if fmt.endswith("png") and output is None:
        raise UsageError(f"--format {fmt} needs --output FILE.png")
    if output is not None:
        check_writable(Path(output), "--output")
    out = render(docs, fmt, sources=list(results))
    if output is not None:
        if isinstance(out, bytes):
            Path(output).write_bytes(out)
        else:
            Path(output).write_text(out)
        err(f"wrote {output}")
    else:
        click.echo(out.decode() if isinstance(out, bytes) else out)
    return 0


@click.command("gate")
@click.option("--baseline", required=True, type=click.Path(dir_okay=False), help="Baseline results JSON file.")
@click.argument("current", type=click.Path(dir_okay=False))
@click.option(
    "--max-speedup-drop",
    type=float,
    default=0.25,
    show_default=True,
    help="Allowed relative drop of a backend's speedup over the reference (0.25 = 25%).",
)
@click.option(
    "--max-memory-growth",
    type=float,
    default=0.25,
    show_default=True,
    help="Allowed relative growth of a backend's peak memory ratio to the reference.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "markdown"]),
    default="table",
    show_default=True,
    help="Output format of the gate report.",
)
def gate_cmd(baseline: str, current: str, max_speedup_drop: float, max_memory_growth: float, fmt: str) -> int:
    """Compare CURRENT results with --baseline; exit 1 on a regression."""
    code, text = run_gate(
        load_results(baseline),
        load_results(current),
        max_speedup_drop=max_speedup_drop,
        max_memory_growth=max_memory_growth,
        format=fmt,
    )
    click.echo(text)
    return code
