"""Placeholder: being written."""

from attrbench.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    """Registers nothing yet."""
