"""``attrbench list-backends``: every registered backend with what it declares."""

from __future__ import annotations

import click
from tabulate import tabulate

from attrbench.plugin_manager import get_backends, report_plugin_warnings


@click.command("list-backends")
def list_backends() -> int:
    """List every registered backend with its properties."""
    backends = get_backends()
    report_plugin_warnings()
    rows = []
    for b in backends.values():
        p = b.properties()
        opts = ", ".join(f"{k}={v!r}" for k, v in p["options"].items()) or "-"
        rows.append(
            [
                p["name"],
                "exact" if p["exact"] else "approximate",
                ",".join(p["devices"]),
                ",".join(p["dtypes"]),
                opts,
                p["description"],
            ]
        )
    click.echo(
        tabulate(rows, headers=["name", "kind", "devices", "dtypes", "options", "description"], tablefmt="simple")
    )
    return 0
