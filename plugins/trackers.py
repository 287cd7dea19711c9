"""Placeholder: being written."""

from attrbench.hookspecs import hookimpl


@hookimpl
def register_trackers(register):
    """Registers nothing yet."""
