"""The ``attrbench`` command line: run, estimate, attribute, report, gate, list-backends.

One module per command; every shared option is defined once in :mod:`attrbench.cli.options`.
Exit codes: 0 done (cells may be oom/timeout), 1 a cell failed with status "error" or "invalid", or an
exact backend's parity verdict is "failed" (run, unless --allow-parity-failures), or the gate failed,
2 bad usage (one line on stderr, never a traceback), 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

from attrbench.cli.attribute import attribute_cmd
from attrbench.cli.estimate import estimate_cmd
from attrbench.cli.list_backends import list_backends
from attrbench.cli.options import err
from attrbench.cli.report import gate_cmd, report_cmd
from attrbench.cli.run import run_cmd
from attrbench.errors import UsageError
from attrbench.guard import check_environment


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attrbench", message="attrbench %(version)s")
def cli() -> None:
    """Benchmark circuit-tracer attribution backends: speed, memory and parity with the reference."""


for command in (list_backends, run_cmd, estimate_cmd, attribute_cmd, report_cmd, gate_cmd):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every usage problem is one line on stderr and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        check_environment()
        rv = cli.main(args=argv, prog_name="attrbench", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        msg = exc.format_message().replace("\n", " ")
        cmd = f" {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else ""
        err(f"error: {msg} (see attrbench{cmd} --help)")
        sys.exit(2)
    except UsageError as exc:
        err(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        sys.exit(2)
    except click.exceptions.ClickException as exc:
        err(f"error: {exc.format_message().splitlines()[0]}")
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        err("interrupted")
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
